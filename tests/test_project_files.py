"""The project's license and citation files say what pyproject.toml says."""
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def test_license_file_is_the_license_pyproject_names():
    assert PROJECT["license"] == {"text": "MIT"}
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License") and "WITHOUT WARRANTY OF ANY KIND" in text


def test_citation_file_is_valid_cff_for_this_version_and_cites_the_paper():
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert cff["cff-version"] == "1.2.0" and cff["message"] and cff["authors"]
    assert cff["version"] == PROJECT["version"] and cff["license"] == "MIT"
    paper = cff["preferred-citation"]
    assert paper["type"] == "conference-paper" and paper["year"] == 2023
    assert paper["title"] == "Understanding, Predicting and Better Resolving Q-Value Divergence in Offline-RL"
    assert [a["family-names"] for a in paper["authors"]] == ["Yue", "Lu", "Kang", "Song", "Huang"]
