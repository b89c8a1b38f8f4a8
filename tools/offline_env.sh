# Source this on a machine that has torch but no package registry (a lent GPU host): it installs
# the wheels carried in .whl*/ into /tmp/site (once), and puts them, src/ and a `python` on the paths.
#   usage: . tools/offline_env.sh
if [ ! -f /tmp/site/.seemrl-wheels ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl*/*.whl \
        && touch /tmp/site/.seemrl-wheels || return 1
fi
# `python` for the workflow's rules: a wrapper script, not a link (a link to a virtual
# environment's python loses that environment). Removed first: writing through an old link
# would overwrite the interpreter it points to.
py3=$(command -v python3)
case $py3 in /tmp/site/*) echo "offline_env.sh: python3 resolves into /tmp/site" >&2; return 1;; esac
rm -f /tmp/site/bin/python && mkdir -p /tmp/site/bin \
    && printf '#!/bin/sh\nexec %s "$@"\n' "$py3" > /tmp/site/bin/python && chmod +x /tmp/site/bin/python
export PYTHONPATH=/tmp/site:$PWD/src PATH=/tmp/site/bin:$PATH PYTHONUNBUFFERED=1
