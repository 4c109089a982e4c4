"""The CLI end to end: params as a subprocess, selfcheck in-process."""

import json
import subprocess
import sys

from adapt.__main__ import main
from adapt.selfcheck import passes


def test_params_subprocess():
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "adapt",
            "params",
            "--backbone",
            "sam-vit-b",
            "--method",
            "parser",
            "--option",
            "scope=conv",
            "--json",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    info = json.loads(out.stdout)
    assert info["adapter"] == 1280 and info["trainable"] == 1280 + 4_058_340


def test_selfcheck_json(capsys):
    assert main(["selfcheck", "--json", "--steps", "2"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"]
    methods = {r["method"] for r in report["results"]}
    assert methods >= {
        "parser",
        "lora",
        "adaptformer",
        "cobot-lora",
        "cobot-adaptformer",
        "hclip",
        "lora-clip",
        "full",
        "decoder",
    }
    for r in report["results"]:
        assert passes(r)
        assert r["step0_max_abs_diff"] <= 1e-5 and r["merge_max_abs_diff"] <= 1e-4
    hclip = [r for r in report["results"] if r["method"] == "hclip" and not r["options"]][0]
    assert hclip["text_he_max_rel_change"] <= 1e-4 and hclip["image_weight_rel_change"] > 1e-3


def test_selfcheck_detects_a_broken_method(monkeypatch):
    # a method that is not identity at step 0 must fail the check
    import adapt.methods.parser as parser_mod

    original = parser_mod.SpectralCoefficients.forward
    monkeypatch.setattr(parser_mod.SpectralCoefficients, "forward", lambda self, w: original(self, w) * 1.01)
    from adapt.selfcheck import check_method

    assert not passes(check_method("parser", "sam"))
