"""Layout discovery and collection: where a dataset's images and masks are, and which go together.

Discovery (`_layout`, `_heldout_dir`, `_descend_wrappers`) finds an images/ + masks/ (or im/ + gt/)
pair of folders or a COCO annotations .json, a held-out folder beside it, and skips folders that
only wrap the dataset; `_describe` and `_no_dataset_message` say what was found instead when
nothing fits ACCEPTED_LAYOUTS. Collection (`_Loader`) pairs images with masks by file stem, or
reads one COCO file, into `_Candidate`s, and records every problem with its file name rather than
stopping at the first; `_read_classes` reads classes.json. Nothing is decoded here: the candidates
are checked by adapt.data.validate.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from adapt.data.archive import JUNK_NAMES
from adapt.data.coco import _check_segmentation
from adapt.data.images import IMAGE_EXTS
from adapt.data.labelstudio import export_to_coco, is_export

__all__ = ["ACCEPTED_LAYOUTS"]

PAIR_LAYOUTS = (("images", "masks"), ("im", "gt"))
HELDOUT_DIRS = ("val", "valid", "validation", "heldout", "held_out", "held-out", "test")
MASK_SUFFIXES = ("_mask", "-mask", ".mask", "_masks", "_gt", "-gt", "_label", "_labels", "_seg")
DEFAULT_IGNORE = 255
JSON_MAX_BYTES = 512 << 20

ACCEPTED_LAYOUTS = (
    "Accepted layouts: (1) an images/ folder and a masks/ folder whose files share names "
    "(cat_01.jpg + cat_01.png); (2) the same with im/ and gt/; (3) a COCO annotations .json "
    "(at the root or in annotations/) with the images in images/ or beside it; (4) the same with a "
    "Label Studio JSON export (brush or polygon labels) in place of the COCO file. "
    "A val/ or heldout/ folder with the same layout is used as the held-out split; "
    "openvocab label-map datasets also need classes.json at the root."
)


# ----------------------------------------------------------------------------------------------
# Finding files


def _visible(p: Path) -> bool:
    return not p.name.startswith(".") and p.name.lower() not in JUNK_NAMES


def _is_image_name(p: Path) -> bool:
    return p.suffix.lower() in IMAGE_EXTS


def _children(folder: Path) -> list[Path]:
    try:
        return sorted(p for p in folder.iterdir() if _visible(p))
    except OSError:
        return []


def _find_dir(folder: Path, name: str) -> Path | None:
    """A child folder by name, ignoring case (Images/ works like images/)."""
    exact = folder / name
    if exact.is_dir():
        return exact
    for p in _children(folder):
        if p.is_dir() and p.name.lower() == name:
            return p
    return None


def _coco_candidates(folder: Path) -> list[Path]:
    found = [p for p in _children(folder) if p.is_file() and p.suffix.lower() == ".json"
             and p.name.lower() != "classes.json"]
    ann = _find_dir(folder, "annotations")
    if ann is not None:
        found += [p for p in _children(ann) if p.is_file() and p.suffix.lower() == ".json"]
    return found


def _layout(folder: Path):
    """("pairs", images_dir, masks_dir) | ("coco", [json candidates]) | None."""
    for img_name, mask_name in PAIR_LAYOUTS:
        img, msk = _find_dir(folder, img_name), _find_dir(folder, mask_name)
        if img is not None and msk is not None:
            return ("pairs", img, msk)
    jsons = _coco_candidates(folder)
    if jsons:
        return ("coco", jsons)
    return None


def _heldout_dir(folder: Path) -> Path | None:
    for name in HELDOUT_DIRS:
        d = _find_dir(folder, name)
        if d is not None:
            return d
    return None


def _descend_wrappers(folder: Path) -> Path:
    """Skip folders that only wrap the dataset (a zip of 'mydata/' holds mydata/images/...)."""
    for _ in range(4):
        if _layout(folder) is not None or _find_dir(folder, "train") is not None:
            return folder
        kids = _children(folder)
        dirs = [p for p in kids if p.is_dir()]
        files = [p for p in kids if p.is_file() and (_is_image_name(p) or p.suffix.lower() == ".json")]
        if len(dirs) == 1 and not files:
            folder = dirs[0]
        else:
            return folder
    return folder


def _describe(folder: Path) -> str:
    kids = _children(folder)
    if not kids:
        return "the folder is empty"
    names = [p.name + ("/" if p.is_dir() else "") for p in kids[:12]]
    more = f", ... ({len(kids) - 12} more)" if len(kids) > 12 else ""
    return "found " + ", ".join(names) + more



def _no_dataset_message(folder: Path) -> str:
    hint = ""
    for img_name, mask_name in PAIR_LAYOUTS:
        img = _find_dir(folder, img_name)
        if img is not None and _find_dir(folder, mask_name) is None:
            hint = f" There is an {img.name}/ folder but no {mask_name}/ folder next to it."
            break
    return f"no dataset found ({_describe(folder)}).{hint} {ACCEPTED_LAYOUTS}"



# ----------------------------------------------------------------------------------------------
# Collecting candidates (pairs and COCO)


@dataclass
class _Candidate:
    stem: str
    image_path: Path
    image_name: str
    mask_name: str
    mask_path: Path | None = None
    coco: list | None = None              # [(class value, segmentation), ...]
    coco_label: str = ""                  # "annotations.json (image 'x.jpg', id 3)"
    json_size: tuple[int, int] | None = None   # (w, h) the COCO file claims


class _Loader:
    def __init__(self, top: Path, label: str, task: str, max_pixels: int):
        self.top = top          # folder the display names are relative to
        self.label = label      # what the user gave (folder or zip name)
        self.task = task
        self.max_pixels = max_pixels
        self.problems: list[tuple[str, str]] = []
        self.skipped: list[tuple[str, str]] = []

    def name(self, p: Path) -> str:
        try:
            return p.relative_to(self.top).as_posix()
        except ValueError:
            return p.as_posix()

    def problem(self, file, message):
        self.problems.append((file if isinstance(file, str) else self.name(file), message))

    # ---- pairs

    def _files_by_stem(self, folder: Path) -> dict[str, list[Path]]:
        by_stem: dict[str, list[Path]] = {}
        for p in _children(folder):
            if p.is_dir():
                self.skipped.append((self.name(p) + "/", "sub-folder ignored"))
            elif _is_image_name(p):
                by_stem.setdefault(p.stem, []).append(p)
            else:
                self.skipped.append((self.name(p), "not an image file (accepted: "
                                     + " ".join(IMAGE_EXTS) + ")"))
        return by_stem

    def collect_pairs(self, img_dir: Path, mask_dir: Path) -> list[_Candidate]:
        images = self._files_by_stem(img_dir)
        masks = self._files_by_stem(mask_dir)
        for by_stem in (images, masks):
            for stem, files in by_stem.items():
                if len(files) > 1:
                    names = " and ".join(self.name(f) for f in files)
                    self.problem(files[0], f"{names} share the name '{stem}'; keep only one of them")
        # Masks named cat_mask.png / CAT.png still pair with cat.jpg when that is unambiguous.
        mask_for: dict[str, str] = {s: s for s in masks if s in images}
        loose_images = {s.lower(): s for s in images if s not in mask_for}
        for m in sorted(masks):
            if m in mask_for.values():
                continue
            key = m.lower()
            for suffix in MASK_SUFFIXES:
                if key.endswith(suffix) and key[: -len(suffix)] in loose_images:
                    key = key[: -len(suffix)]
                    break
            s = loose_images.pop(key, None)
            if s is not None:
                mask_for[s] = m
        used_masks = set(mask_for.values())
        out = []
        for stem in sorted(images):
            img = images[stem][0]
            if stem not in mask_for:
                self.problem(img, f"no mask for this image: expected a file named '{stem}' "
                                  f"(any image extension) in {self.name(mask_dir)}/")
                continue
            mp = masks[mask_for[stem]][0]
            out.append(_Candidate(stem, img, self.name(img), self.name(mp), mask_path=mp))
        for m in sorted(masks):
            if m not in used_masks:
                self.problem(masks[m][0], f"no image for this mask: expected a file named '{m}' "
                                          f"(any image extension) in {self.name(img_dir)}/")
        return out

    # ---- COCO

    def collect_coco(self, folder: Path, jsons: list[Path]):
        """-> (candidates, classes or None). classes only for openvocab."""
        doc = self._coco_document(folder, jsons)
        if doc is None:
            return [], None
        jpath, data = doc
        jname = self.name(jpath)
        images, anns, cats = data.get("images"), data.get("annotations"), data.get("categories", [])
        if not isinstance(images, list) or not isinstance(anns, list) or not isinstance(cats, list):
            self.problem(jname, "'images', 'annotations' and 'categories' must be JSON lists")
            return [], None
        good_cats, cat_value, classes = self._coco_categories(jname, cats)
        by_id = self._coco_images(jname, images)
        per_image = self._coco_annotations(jname, anns, by_id, cat_value, bool(good_cats))
        ignored = {n for n in data.get("ignored_file_names") or [] if isinstance(n, str)}
        return self._coco_candidates(folder, jpath, by_id, per_image, ignored), classes

    def _coco_document(self, folder: Path, jsons: list[Path]):
        """The folder's one COCO file as (path, parsed JSON), or None (after reporting why)."""
        docs = []
        for j in jsons:
            try:
                if j.stat().st_size > JSON_MAX_BYTES:
                    self.problem(j, f"JSON file is larger than {JSON_MAX_BYTES >> 20} MB")
                    continue
                data = json.loads(j.read_text(encoding="utf-8-sig"))
            except json.JSONDecodeError as e:
                self.problem(j, f"not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})")
                continue
            except (OSError, UnicodeDecodeError) as e:
                self.problem(j, f"could not be read ({e})")
                continue
            if is_export(data):  # a Label Studio export: read as the COCO document it amounts to
                data, problems, skipped = export_to_coco(data)
                for message in problems:
                    self.problem(j, message)
                self.skipped.extend(skipped)
            if isinstance(data, dict) and "images" in data and "annotations" in data:
                docs.append((j, data))
            else:
                self.skipped.append((self.name(j), "not a COCO file (no 'images' and 'annotations')"))
        if len(docs) > 1:
            names = ", ".join(self.name(j) for j, _ in docs)
            self.problem(self.name(folder) + "/" if folder != self.top else self.label,
                         f"found several COCO annotation files ({names}); keep exactly one per folder")
            return None
        return docs[0] if docs else None

    def _coco_categories(self, jname: str, cats: list):
        """-> (well-formed categories, category id -> mask value, classes or None)."""
        cat_value: dict = {}
        classes = None
        good_cats = []
        for c in cats:
            if not isinstance(c, dict) or "id" not in c or not isinstance(c.get("name"), str):
                self.problem(jname, f"category {c!r} needs an 'id' and a 'name'")
                continue
            good_cats.append(c)
        if self.task == "openvocab":
            if not good_cats:
                self.problem(jname, "has no 'categories'; the openvocab task needs category names")
            classes = ["background"]
            for c in sorted(good_cats, key=lambda c: (str(type(c["id"])), c["id"])):
                name = c["name"].strip()
                if name.lower() == "background":
                    cat_value[c["id"]] = 0
                    continue
                if name in classes:
                    self.problem(jname, f"category name '{name}' is used twice")
                    continue
                cat_value[c["id"]] = len(classes)
                classes.append(name)
            if len(classes) > 255:
                self.problem(jname, f"has {len(classes) - 1} categories; at most 254 fit an 8-bit label map")
        else:
            for c in good_cats:
                cat_value[c["id"]] = 1
        return good_cats, cat_value, classes

    def _coco_images(self, jname: str, images: list) -> dict:
        """image id -> its well-formed entry."""
        by_id: dict = {}
        for im in images:
            if not isinstance(im, dict) or "id" not in im or not isinstance(im.get("file_name"), str):
                self.problem(jname, f"image entry {str(im)[:80]} needs an 'id' and a 'file_name'")
                continue
            if im["id"] in by_id:
                self.problem(jname, f"image id {im['id']} is used twice")
                continue
            by_id[im["id"]] = im
        return by_id

    def _coco_annotations(self, jname: str, anns: list, by_id: dict, cat_value: dict, has_cats: bool) -> dict:
        """image id -> [(mask value, segmentation)] of its well-formed annotations."""
        per_image: dict = {i: [] for i in by_id}
        for k, a in enumerate(anns):
            if not isinstance(a, dict):
                self.problem(jname, f"annotation #{k} is not a JSON object")
                continue
            aid = a.get("id", f"#{k}")
            if a.get("image_id") not in by_id:
                self.problem(jname, f"annotation {aid} refers to image id {a.get('image_id')!r}, which is not in 'images'")
                continue
            if "segmentation" not in a or a["segmentation"] in (None, [], {}):
                self.problem(jname, f"annotation {aid} has no 'segmentation' (boxes alone cannot train a mask)")
                continue
            why = _check_segmentation(a["segmentation"])
            if why:
                self.problem(jname, f"annotation {aid} {why}")
                continue
            cid = a.get("category_id")
            if cid not in cat_value:
                if self.task == "openvocab" or has_cats:
                    self.problem(jname, f"annotation {aid} has category_id {cid!r}, which is not in 'categories'")
                    continue
                value = 1
            else:
                value = cat_value[cid]
            per_image[a["image_id"]].append((value, a["segmentation"]))
        return per_image

    def _coco_candidates(self, folder: Path, jpath: Path, by_id: dict, per_image: dict, ignored=frozenset()) -> list:
        """One candidate per listed image found on disk; images on disk the JSON leaves out are problems
        (except `ignored` names: a Label Studio export's images of tasks with no annotation)."""
        jname = self.name(jpath)
        images_dir = _find_dir(folder, "images") or folder
        out = []
        listed: set[Path] = set()
        stems_seen: dict[str, str] = {}
        for iid, im in by_id.items():
            fname = im["file_name"]
            tries = [images_dir / fname, jpath.parent / fname, folder / fname,
                     images_dir / PurePosixPath(fname.replace("\\", "/")).name]
            tries += [d / other for other in im.get("other_names") or [] for d in (images_dir, jpath.parent)]
            path = next((t for t in tries if t.is_file()), None)
            if path is None:
                where = self.name(images_dir) + "/" if images_dir != self.top else "the dataset folder"
                self.problem(jname, f"image '{fname}' (id {iid}) not found in {where}")
                continue
            listed.add(path.resolve())
            stem = path.stem
            if stem in stems_seen:
                self.problem(jname, f"images '{stems_seen[stem]}' and '{fname}' have the same name '{stem}'; rename one")
                continue
            stems_seen[stem] = fname
            w, h = im.get("width"), im.get("height")
            json_size = (w, h) if isinstance(w, int) and isinstance(h, int) else None
            out.append(_Candidate(stem, path, self.name(path), f"{jname} (image '{fname}', id {iid})",
                                  coco=per_image[iid], coco_label=f"{jname} (image '{fname}', id {iid})",
                                  json_size=json_size))
        # Image files the JSON does not mention have no annotation at all.
        for p in _children(images_dir):
            if p.is_file() and _is_image_name(p) and p.resolve() not in listed and p.name not in ignored:
                self.problem(p, f"image is not listed in {jname}, so it has no mask; add it or remove it")
        return out


def _read_classes(path: Path, loader: _Loader):
    """classes.json -> (classes, ignore_index) or (None, None) after reporting why."""
    name = loader.name(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as e:
        loader.problem(name, f"not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})")
        return None, None
    except (OSError, UnicodeDecodeError) as e:
        loader.problem(name, f"could not be read ({e})")
        return None, None
    ignore = DEFAULT_IGNORE
    if isinstance(data, dict):
        if "classes" not in data:
            loader.problem(name, 'expected a list of class names, or {"classes": [...], "ignore_index": 255}')
            return None, None
        ignore = data.get("ignore_index", DEFAULT_IGNORE)
        data = data["classes"]
        if ignore is not None and (isinstance(ignore, bool) or not isinstance(ignore, int)
                                   or not 0 <= ignore <= 255):
            loader.problem(name, f"ignore_index must be an integer 0-255 or null, got {ignore!r}")
            return None, None
    if not isinstance(data, list) or not data or not all(isinstance(c, str) and c.strip() for c in data):
        loader.problem(name, "classes must be a non-empty list of class names (strings); "
                             "the position in the list is the mask value")
        return None, None
    names = [c.strip() for c in data]
    dupes = sorted({c for c in names if names.count(c) > 1})
    if dupes:
        loader.problem(name, f"class names listed twice: {', '.join(dupes)}")
        return None, None
    limit = ignore if ignore is not None else 256
    if len(names) > limit:
        loader.problem(name, f"{len(names)} classes do not fit below ignore_index {ignore} in an 8-bit mask")
        return None, None
    return names, ignore
