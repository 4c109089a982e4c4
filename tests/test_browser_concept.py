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
    if os.environ.get("STUDIO_SCREENSHOTS"):  # `make screenshots`: the README's picture of Compare
        page.screenshot(path=os.path.join(os.environ["STUDIO_SCREENSHOTS"], "studio-compare.png"), full_page=True)


def test_two_clicks_on_the_image_draw_an_exemplar_box(page):
    """On the Concept task the Preview's exemplar boxes field shows; a click on the image sets a
    corner, a second one the opposite corner: the box is appended to the field, the line beside
    Predict counts it, and Predict runs with it. Back on the dichotomous task the field hides."""
    tab(page, "Preview")
    page.locator("#task").get_by_text(re.compile("Concept")).click()
    expect(page.locator("#predict-boxes")).to_be_visible()
    page.locator("#predict-example input").click()
    page.get_by_role("option", name="colours").click()
    view = page.locator("#predict-view img")
    expect(view).to_be_visible()
    size = view.bounding_box()
    view.click(position={"x": size["width"] * 0.6, "y": size["height"] * 0.7})
    expect(page.locator("#predict-boxes")).to_contain_text("set: click the opposite corner")
    view.click(position={"x": size["width"] * 0.2, "y": size["height"] * 0.3})
    field = page.locator("#predict-boxes textarea, #predict-boxes input").first
    expect(field).to_have_value(re.compile(r"^\d+,\d+,\d+,\d+$"))
    x0, y0, x1, y1 = map(int, field.input_value().split(","))
    assert x0 < x1 and y0 < y1
    expect(page.locator("#predict-runs")).to_contain_text("1 exemplar box(es)")
    page.locator("#predict").click()
    expect(page.locator("#predict-msg")).to_contain_text("Done")
    expect(page.locator("#predict-main img")).to_be_visible()
    page.locator("#task").get_by_text(re.compile("Dichotomous")).click()
    expect(page.locator("#predict-boxes")).to_be_hidden()
