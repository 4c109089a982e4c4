"""The label-the-rest loop in a real browser (issue 24, item 11): after a training job, the Label
the rest tab starts from its adapter; the results name their files, count what was reviewed and
mark it; "Download all" and the labelled set's download each take one click, and the download
holds the review; a retraining round's scores are set beside the previous adapter's."""

from __future__ import annotations

import csv
import io
import re
import zipfile

from browser_support import expect, tab
from studio_support import dataset_zip


def upload(page, elem_id: str, files):
    page.locator(f"#{elem_id} input[type=file]").set_input_files(files)


def downloaded(page, button: str, name: str):
    """Click `button` once; the browser saves a file: its path."""
    with page.expect_download() as info:
        page.locator(f"#{button}").click()
    path = page.workdir / name
    info.value.save_as(path)
    return path


def test_label_the_rest_starts_from_the_trained_adapter_and_shows_each_review(page):
    from PIL import Image

    from adapt.data.synthetic import make_dataset

    upload(page, "upload-zip", str(dataset_zip(page.workdir, n=4, size=96, domain="source")))
    page.locator("#check-data").click()
    expect(page.get_by_role("tab", name=re.compile("Train"))).to_have_attribute("aria-selected", "true")
    page.locator("#steps input").fill("3")
    page.locator("#steps input").press("Tab")
    page.locator("#train").click()
    expect(page.locator("#job-status")).to_contain_text("done", timeout=180_000)
    job = re.search(r"[?&]job=([A-Za-z0-9_-]+)", page.url).group(1)

    tab(page, "Label the rest")
    expect(page.locator("#rest-adapter input")).to_have_value(re.compile(f"job {job[:8]}"))  # not the frozen model
    files = []
    for i, scene in enumerate(make_dataset("source", n=3, size=96, seed=11)):
        files.append(str(page.workdir / f"photo{i}.png"))
        Image.fromarray(scene.image).save(files[-1])
    upload(page, "rest-upload", files)
    page.locator("#rest-run").click()
    status = page.locator("#rest-status")
    expect(status).to_contain_text("Reviewed 0 of 3", timeout=180_000)
    gallery = page.locator("#rest-gallery")
    for i in range(3):
        expect(gallery).to_contain_text(f"photo{i}.png")

    page.locator("#rest-gallery img").first.click()
    expect(page.locator("#rest-chosen")).to_contain_text("#1")
    page.locator("#rest-accept").click()
    expect(page.locator("#rest-chosen")).to_contain_text("marked accepted")
    expect(status).to_contain_text("Reviewed 1 of 3")
    expect(gallery).to_contain_text("✓ accepted")

    with zipfile.ZipFile(downloaded(page, "rest-download", "labels.zip")) as z:  # one click
        scores = list(csv.DictReader(io.StringIO(z.read("scores.csv").decode())))
    assert [r["review"] for r in scores].count("accepted") == 1

    tab(page, "Data")
    with zipfile.ZipFile(downloaded(page, "download-set", "labelled-set.zip")) as z:  # one click
        assert len([n for n in z.namelist() if n.startswith("images/")]) == 1


def test_a_retraining_round_is_compared_with_the_previous_adapter_on_the_page(page):
    tab(page, "Label the rest")
    page.locator("#rest-steps input").fill("2")
    page.locator("#rest-steps input").press("Tab")
    page.locator("#rest-retrain").click()
    expect(page.get_by_role("tab", name=re.compile("Progress"))).to_have_attribute("aria-selected", "true")
    expect(page.locator("#job-status")).to_contain_text("done", timeout=180_000)
    scores = page.locator("#scores")
    expect(scores).to_contain_text("previous adapter")
    expect(scores).to_contain_text("same images as the adapter it continues")
