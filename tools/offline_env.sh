# Source this on a machine that has torch but no package registry (a lent GPU host): it installs
# the wheels carried in .whl*/ into /tmp/site (once), and puts them, src/ and a `python` on the paths.
#   usage: . tools/offline_env.sh
if [ ! -f /tmp/site/.seemrl-wheels ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl*/*.whl \
        && touch /tmp/site/.seemrl-wheels || return 1
fi
# a wrapper, not a link: a link to a virtual environment's python loses that environment
mkdir -p /tmp/site/bin && printf '#!/bin/sh\nexec %s "$@"\n' "$(command -v python3)" > /tmp/site/bin/python \
    && chmod +x /tmp/site/bin/python
export PYTHONPATH=/tmp/site:$PWD/src PATH=/tmp/site/bin:$PATH PYTHONUNBUFFERED=1
