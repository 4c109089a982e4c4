"""The Preview tab's Compare in a real browser: a concept adapter (LoRA on tiny-sam3) loaded in the
Adapters tab, the Concept task chosen, and Compare shows three label maps (frozen CLIP, frozen
SAM 3, the adapter) with their legends.

Skipped, with the reason, when Chromium or Playwright (browser_support) or the `sam3` package is
missing outside CI."""

from __future__ import annotations

import os
import re

import pytest
from browser_support import expect, tab

if os.environ.get("CI") != "true":
    pytest.importorskip("sam3")


def test_compare_shows_three_label_maps(page):
    from adapt.backbones import build_backbone
    from adapt.export import save_adapter, zip_adapter
    from adapt.methods import attach
    from adapt.tasks import make_task

    task = make_task("concept", build_backbone("tiny-sam3"), classes=["background", "red object"])
    folder = save_adapter(attach(task.backbone, "lora"), page.workdir / "concept", task="concept", classes=task.classes)
    tab(page, "Adapters")
    page.locator("#adapter-upload input[type=file]").set_input_files(
        str(zip_adapter(folder, folder.with_suffix(".zip")))
    )
    page.locator("#load-adapter").click()
    expect(page.locator("#adapter-msg")).to_contain_text("Loaded")

    tab(page, "Preview")
    page.locator("#task").get_by_text(re.compile("Concept")).click()
    page.locator("#adapter input").click()
    page.get_by_role("option", name=re.compile("uploaded: lora on tiny-sam3")).click()
    page.locator("#predict-example input").click()
    page.get_by_role("option", name="colours").click()
    page.locator("#compare").click()
    expect(page.locator("#compare-msg")).to_contain_text("Done: 3 models")
    for k in range(3):
        expect(page.locator(f"#compare-map-{k} img")).to_be_visible()
        expect(page.locator(f"#compare-legend-{k} img")).to_be_visible()
    expect(page.locator("#compare-title-2")).to_contain_text("Adapted")
