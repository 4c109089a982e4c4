"""The studio as a Label Studio ML backend: it serves the adapted model's masks to a Label Studio
project, learns from the annotations made there, and retrains when asked.

The owner connects a project once, through the JSON API beside app/rest.py's (owner token in the
body, as there):

    POST /studio/v1/labelstudio/connect  {"owner", "url", "token", "project", "task", "backbone",
                                          "adapter", "method", "steps", "train_every", "keep_token"}
        -> {"connection", "backend_path": "/labelstudio/<connection>", "model_version", ...}
    POST /studio/v1/labelstudio/status      {"owner", "connection"} -> the connection's state
    POST /studio/v1/labelstudio/disconnect  {"owner", "connection"}

Label Studio is then given <studio>/labelstudio/<connection> as its model URL and calls, as its
ML-backend protocol has them (label-studio-ml-backend's api.py):

    GET  .../health   -> {"status": "UP", "model_version"}
    POST .../setup    {"project": "3.1712345678", "schema": <labelling config>} -> {"model_version"}
    POST .../predict  {"project", "tasks": [{"id", "data": {"image": url}}]}
                      -> {"results": [{"result": [brush results], "score", "model_version"}], "model_version"}
    POST .../webhook  {"action": "ANNOTATION_CREATED" | "ANNOTATION_UPDATED" | "ANNOTATIONS_DELETED"
                       | "START_TRAINING", "project": {"id"}, "task", "annotation"}
    POST .../train    {"project", "annotations"}: "start training" where Label Studio still sends it so

The connection id is the capability: it is unguessable and names one owner's connection, so no
other owner's project is reachable through it, and the owner's own API checks the owner token.
The API token is checked when connecting (label-studio-sdk reads the project and its labelling
config) and kept only where the owner says: in this process's memory ("memory", the default: a
restart asks for it again) or in the connection's folder ("disk", mode 0600). It is never logged
nor answered. Images are fetched only from the Label Studio server given, with that token, within
the studio's upload limits, and checked like every upload.

Each saved annotation becomes one pair in the connection's set (app.config.LabelStudioFiles),
replaced when the annotation is updated and removed when it is deleted; every check runs before
anything is written, so a refused annotation adds nothing. "Start training" (or every
`train_every` new annotations) queues a training job through Studio.submit, warm-started from the
served adapter, with a held-out part of the pairs that stays the same from round to round. When
it finishes, its adapter becomes the served model_version only when its held-out score is not
worse than the served model's on the same images; otherwise the old one stays and the reason is
logged and kept in the connection's decisions (its status shows them).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import secrets
import shutil
import tempfile
import threading
from pathlib import Path
from urllib.parse import urljoin, urlparse

import numpy as np

from adapt.data import mask_results, parse_config, results_mask
from adapt.files import atomic_path, write_json, write_text, zip_folder
from adapt.methods import methods_for
from adapt.tasks import TASKS
from app.catalog import backbone_for, backbones_for, family_for_task
from app.config import LabelStudioFiles
from app.jobs import FINISHED, new_token
from app.rest import BadRequest, answered, json_route, read_json
from app.studio import MAX_ID, Studio, UserError, as_text, check_owner, number

log = logging.getLogger("app.lsbackend")

ROUTE = "/labelstudio"  # Label Studio's model URL: <studio>/labelstudio/<connection>
CONNECTION = re.compile(r"[A-Za-z0-9_-]{32}")
MAX_PROTOCOL_BODY = 32 << 20  # bytes: a webhook carries the annotation's brush codes
MAX_TASKS = 16  # tasks one predict request may ask for
MAX_URL = 2048
MAX_TOKEN = 4096
TIMEOUT_S = 30  # each call to Label Studio
KEEP_TOKEN = ("memory", "disk")
HELDOUT_EVERY = 4  # about one pair in this many is held out to compare models on
DECISIONS_KEPT = 20
ADDED = ("ANNOTATION_CREATED", "ANNOTATION_UPDATED")
DELETED = ("ANNOTATIONS_DELETED", "ANNOTATION_DELETED")
START_TRAINING = "START_TRAINING"
CONNECT_FIELDS = (
    "owner",
    "url",
    "token",
    "project",
    "task",
    "backbone",
    "adapter",
    "method",
    "steps",
    "train_every",
    "keep_token",
)


def _client(url: str, token: str):
    from label_studio_sdk import LabelStudio

    return LabelStudio(base_url=url, api_key=token, timeout=TIMEOUT_S)


def _refused(status: int, what: str) -> str:
    if status in (401, 403):
        return (
            f"Label Studio refused the API token (HTTP {status}) for {what}: copy it again from Label Studio's "
            "Account & Settings (an access token or a personal access token) and connect again"
        )
    if status == 404:
        return f"Label Studio has no {what} (HTTP 404)"
    return f"Label Studio answered HTTP {status} for {what}"


def _project_id(value) -> int | None:
    """The project id in what Label Studio sends: 3, "3", "3.1712345678" (setup and predict),
    or {"id": 3} (webhooks)."""
    if isinstance(value, dict):
        value = value.get("id")
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and re.fullmatch(r"\d{1,12}(\.\d{1,20})?", value):
        return int(value.split(".")[0])
    return None


def _held(stem: str) -> bool:
    return int(hashlib.sha256(stem.encode()).hexdigest(), 16) % HELDOUT_EVERY == 0


class LabelStudioBackend:
    def __init__(self, studio: Studio):
        self.studio = studio
        self.paths = studio.paths
        self.limits = studio.limits
        self._tokens: dict[str, str] = {}  # connection -> API token, for keep_token "memory"
        self._lock = threading.RLock()  # one change to a connection's pairs and state at a time

    # --- the owner's side -------------------------------------------------------------------------
    def connect(
        self,
        owner,
        url,
        token,
        project,
        task=None,
        backbone=None,
        adapter=None,
        method=None,
        steps=None,
        train_every=None,
        keep_token=None,
    ) -> dict:
        """Check the project through Label Studio's API with the token, and make a connection."""
        check_owner(owner)
        url = as_text(url, "the Label Studio URL", MAX_URL).strip().rstrip("/")
        if urlparse(url).scheme not in ("http", "https") or not urlparse(url).netloc:
            raise UserError("give Label Studio's address as http(s)://host:port, e.g. http://127.0.0.1:8080")
        token = as_text(token, "the API token", MAX_TOKEN).strip()
        if not token:
            raise UserError("give a Label Studio API token (Account & Settings in Label Studio)")
        project = number(project, "the Label Studio project id", 1, 2**31 - 1, integer=True)
        keep = as_text(keep_token, "keep_token", 10).strip() or KEEP_TOKEN[0]
        if keep not in KEEP_TOKEN:
            raise UserError(f"keep_token must be one of {', '.join(KEEP_TOKEN)} (where the API token is kept)")
        model = self._model_choice(owner, task, backbone, adapter, method)
        steps = number(steps or 100, "steps", 1, self.limits.max_steps, integer=True)
        every = number(train_every or 0, "train_every", 0, 100_000, integer=True)
        config = self._project_config(url, token, project)
        connection = secrets.token_urlsafe(24)
        files = self.paths.labelstudio(owner, connection)
        files.folder.mkdir(parents=True)
        if keep == "disk":
            write_text(files.token, token, mode=0o600)
        else:
            self._tokens[connection] = token
        settings = {
            **model,
            **config,
            "url": url,
            "project": project,
            "steps": steps,
            "train_every": every,
            "keep_token": keep,
            "since_training": 0,
            "training_job": None,
            "heldout": [],
            "decisions": [],
        }
        write_json(files.settings, settings)
        log.info("connection %s…: Label Studio project %d at %s", connection[:6], project, url)
        return self._describe(owner, connection, files, settings)

    def _model_choice(self, owner: str, task, backbone, adapter, method) -> dict:
        """The task, backbone and method a connection serves and trains: the adapter's own when one
        is given (an adapter of this browser's), else those asked for (by default the task's first
        backbone, the bundled one, and its first method)."""
        from adapt.export import AdapterError, read_adapter

        adapter = as_text(adapter, "the adapter id", MAX_ID).strip()
        if adapter:
            try:
                cfg, _ = read_adapter(self.studio._adapter_path(owner, adapter))
            except AdapterError as e:
                raise UserError(str(e)) from None
            task, backbone, method = cfg.get("task") or task, cfg["base_model"]["name"], cfg["method"]
        task = as_text(task, "task", MAX_ID).strip() or next(iter(TASKS))
        family = family_for_task(task)
        backbone = backbone_for(task, as_text(backbone, "backbone", MAX_ID).strip() or backbones_for(task)[0])
        method = as_text(method, "method", MAX_ID).strip() or methods_for(family)[0]
        if method not in methods_for(family):
            raise UserError(f"{method!r} does not apply to {backbone}; choose one of {', '.join(methods_for(family))}")
        return {"task": task, "backbone": backbone, "method": method, "served": adapter}

    def _project_config(self, url: str, token: str, project: int) -> dict:
        import httpx
        from label_studio_sdk.core.api_error import ApiError

        try:
            found = _client(url, token).projects.get(id=project)
        except ApiError as e:
            raise UserError(_refused(e.status_code or 0, f"project {project}")) from None
        except httpx.HTTPError as e:
            raise UserError(f"cannot reach Label Studio at {url} ({type(e).__name__})") from None
        try:
            return parse_config(found.label_config)
        except ValueError as e:
            raise UserError(f"Label Studio project {project}: {e}") from None

    def status(self, owner, connection) -> dict:
        files, settings = self._owned(owner, connection)
        settings = self._settle(connection, files, settings)
        return self._describe(owner, connection, files, settings)

    def disconnect(self, owner, connection) -> str:
        files, _ = self._owned(owner, connection)
        with self._lock:
            self._tokens.pop(connection, None)
            shutil.rmtree(files.folder, ignore_errors=True)
        return f"disconnected: Label Studio's calls to {ROUTE}/{connection} are refused from now on"

    def _owned(self, owner, connection) -> tuple[LabelStudioFiles, dict]:
        check_owner(owner)
        connection = as_text(connection, "the connection id", MAX_ID).strip()
        files = self.paths.labelstudio(owner, connection) if CONNECTION.fullmatch(connection) else None
        if files is None or not files.settings.is_file():
            raise UserError(
                "no such Label Studio connection for this browser (each is private to the browser that made it)"
            )
        return files, json.loads(files.settings.read_text())

    def _describe(self, owner: str, connection: str, files: LabelStudioFiles, settings: dict) -> dict:
        token = (
            "kept in memory" if connection in self._tokens else "kept on disk" if files.token.exists() else "missing"
        )
        return {
            "connection": connection,
            "backend_path": f"{ROUTE}/{connection}",
            "url": settings["url"],
            "project": settings["project"],
            "labels": settings["labels"],
            "task": settings["task"],
            "backbone": settings["backbone"],
            "method": settings["method"],
            "model_version": self._version(settings),
            "pairs": len(self._index(files)),
            "since_training": settings["since_training"],
            "train_every": settings["train_every"],
            "training_job": settings["training_job"],
            "decisions": settings["decisions"],
            "token": token,
        }

    # --- Label Studio's side ----------------------------------------------------------------------
    def _connection(self, connection: str) -> tuple[str, LabelStudioFiles, dict]:
        found = self.paths.labelstudio_connections(connection) if CONNECTION.fullmatch(connection or "") else []
        if len(found) != 1 or not LabelStudioFiles(found[0]).settings.is_file():
            raise UserError(
                "unknown connection: connect the project in the studio first (its answer gives this model URL)"
            )
        files = LabelStudioFiles(found[0])
        owner = found[0].parent.parent.name
        return owner, files, self._settle(connection, files, json.loads(files.settings.read_text()))

    @staticmethod
    def _check_project(settings: dict, value) -> None:
        asked = _project_id(value)
        if asked is None:
            raise BadRequest('the request names no project: Label Studio sends "project" (an id, or {"id": ...})')
        if asked != settings["project"]:
            raise UserError(
                f"unknown project {asked}: this connection serves Label Studio project {settings['project']} "
                f"only; connect project {asked} in the studio to get its own model URL"
            )

    def health(self, connection: str) -> dict:
        _, _, settings = self._connection(connection)
        return {"status": "UP", "model_class": "adapt-studio", "model_version": self._version(settings)}

    def setup(self, connection: str, body: dict) -> dict:
        _, files, settings = self._connection(connection)
        self._check_project(settings, body.get("project"))
        if body.get("schema") is not None:
            try:
                config = parse_config(body["schema"])
            except ValueError as e:
                raise UserError(f"project {settings['project']}: {e}") from None
            if config["labels"] != settings["labels"] and self._index(files):
                raise UserError(
                    f"the project's labels changed from {settings['labels']} to {config['labels']} after annotations "
                    "reached the studio: connect the project again to start a new labelled set"
                )
            with self._lock:
                settings = {**json.loads(files.settings.read_text()), **config}
                write_json(files.settings, settings)
        return {"model_version": self._version(settings)}

    def predict(self, connection: str, body: dict) -> dict:
        """The served model's mask per task, as brush results with the model's confidence as score."""
        owner, files, settings = self._connection(connection)
        self._check_project(settings, body.get("project"))
        tasks = body.get("tasks")
        if not isinstance(tasks, list) or not tasks or not all(isinstance(t, dict) for t in tasks):
            raise BadRequest('the request has no "tasks": a list of Label Studio tasks ({"id", "data": {...}})')
        if len(tasks) > MAX_TASKS:
            raise UserError(f"{len(tasks)} tasks in one request; at most {MAX_TASKS} are predicted at once")
        token = self._token(connection, files)
        images = [self._fetch_image(settings, token, t) for t in tasks]  # every image before the model runs
        from app.placement import run

        task_obj, _, where = self.studio.model(owner, settings["served"], settings["backbone"], settings["task"])
        kind = TASKS[settings["task"]].mask
        request = {"classes": settings["labels"]} if kind.needs_class_names else {}
        predicted = run(
            lambda device: task_obj.predict_many(images, device=device, **request), task_obj.backbone, where
        )
        names = settings["labels"][: 1 if kind.binary else None]
        version = self._version(settings)
        results = []
        for outputs, scores in predicted:
            labels = kind.decode(outputs.get("index", outputs["main"]))
            results.append(
                {
                    "result": mask_results(labels, names, settings["from_name"], settings["to_name"]),
                    "score": round(1.0 - float(scores["uncertainty"]), 6),
                    "model_version": version,
                }
            )
        return {"results": results, "model_version": version}

    def webhook(self, connection: str, body: dict) -> dict:
        owner, files, settings = self._connection(connection)
        action = body.get("action")
        if not isinstance(action, str) or not action:
            raise BadRequest('the webhook body has no "action" (e.g. {"action": "ANNOTATION_CREATED", ...})')
        if action not in (*ADDED, *DELETED, START_TRAINING):
            return {"status": "ignored", "action": action[:40]}
        task, annotation = body.get("task"), body.get("annotation")
        project = body.get("project")
        if project is None:  # annotation events may carry the project only inside the task
            project = (task or {}).get("project") if isinstance(task, dict) else None
        self._check_project(settings, project)
        if action == START_TRAINING:
            return self._train(owner, connection, files)
        if action in DELETED:
            return self._delete(files, body)
        return self._add(owner, connection, files, settings, task, annotation)

    def train(self, connection: str, body: dict) -> dict:
        """Label Studio's older "start training" call (POST .../train with the annotated tasks): the
        pairs the webhooks brought are what trains, so it is START_TRAINING by another route."""
        return self.webhook(connection, {"action": START_TRAINING, "project": body.get("project")})

    # --- learning from annotations ----------------------------------------------------------------
    def _add(self, owner: str, connection: str, files: LabelStudioFiles, settings: dict, task, annotation) -> dict:
        """One annotation as the pair of its task (replacing the task's earlier pair), every check first."""
        if not isinstance(task, dict) or not isinstance(annotation, dict):
            raise BadRequest('an annotation event needs "task" and "annotation" objects, as Label Studio sends them')
        tid, aid = task.get("id"), annotation.get("id")
        if not isinstance(tid, int) or isinstance(tid, bool) or not isinstance(aid, int) or isinstance(aid, bool):
            raise BadRequest('the webhook\'s "task" and "annotation" need integer "id"s')
        if annotation.get("was_cancelled"):
            return self._delete(files, {"annotations": [{"id": aid}]})
        image = self._fetch_image(settings, self._token(connection, files), task)
        kind = TASKS[settings["task"]].mask
        values = {label: 1 if kind.binary else k for k, label in enumerate(settings["labels"], 1)}
        try:
            labels = results_mask(annotation.get("result"), image.shape[0], image.shape[1], values)
        except ValueError as e:
            raise UserError(f"task {tid}, annotation {aid}: {e}") from None
        stem = f"ls-{tid}"
        with self._lock:
            if stem not in self._index(files) and len(self._index(files)) >= self.limits.max_images:
                raise UserError(
                    f"this project already has {self.limits.max_images} pairs in the studio, the most a dataset "
                    "takes here (ADAPT_MAX_IMAGES): delete annotations in Label Studio, or connect a new project"
                )
            self.studio.check_storage(owner, 2 * image.nbytes)  # the PNGs are at most this big
            self._write_pair(files.pairs, stem, image, kind.encode(labels), kind, settings["labels"])
            index = {**self._index(files), stem: {"task": tid, "annotation": aid}}
            write_json(files.index, index)
            settings = json.loads(files.settings.read_text())
            settings["since_training"] += 1
            write_json(files.settings, settings)
        answer = {"status": "added", "pair": stem, "pairs": len(index)}
        every = settings["train_every"]
        if every and settings["since_training"] >= every and not settings["training_job"]:
            answer["training"] = self._train(owner, connection, files)
        return answer

    @staticmethod
    def _write_pair(folder: Path, stem: str, image: np.ndarray, mask: np.ndarray, kind, labels: list[str]) -> None:
        """image and mask PNGs written together: each to a temporary name, renamed only when both
        were written (a failure leaves neither)."""
        from PIL import Image

        for sub in ("images", "masks"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        with atomic_path(folder / "images" / f"{stem}.png") as ti, atomic_path(folder / "masks" / f"{stem}.png") as tm:
            Image.fromarray(np.ascontiguousarray(image)).save(ti, format="PNG")
            Image.fromarray(np.ascontiguousarray(mask)).save(tm, format="PNG")
        kind.write_classes(folder, kind.classes(labels))

    def _delete(self, files: LabelStudioFiles, body: dict) -> dict:
        listed = body.get("annotations") or ([body["annotation"]] if isinstance(body.get("annotation"), dict) else [])
        ids = {a.get("id") for a in listed if isinstance(a, dict)} if isinstance(listed, list) else set()
        if not ids:
            raise BadRequest('a delete event needs "annotations": [{"id": ...}] (or one "annotation")')
        with self._lock:
            index = self._index(files)
            gone = sorted(stem for stem, entry in index.items() if entry["annotation"] in ids)
            for stem in gone:
                for sub in ("images", "masks"):
                    (files.pairs / sub / f"{stem}.png").unlink(missing_ok=True)
                del index[stem]
            write_json(files.index, index)
        return {"status": "removed", "removed": gone, "pairs": len(index)}

    @staticmethod
    def _index(files: LabelStudioFiles) -> dict:
        """stem -> {"task", "annotation"} of the pairs on disk (the janitor removes uploads untouched
        for ADAPT_RETENTION_DAYS, pairs included: those are gone from the set)."""
        index = json.loads(files.index.read_text()) if files.index.is_file() else {}
        return {
            stem: entry
            for stem, entry in index.items()
            if all((files.pairs / sub / f"{stem}.png").is_file() for sub in ("images", "masks"))
        }

    def _train(self, owner: str, connection: str, files: LabelStudioFiles) -> dict:
        """Queue a training job on the pairs, warm-started from the served adapter; its held-out
        pairs are the earlier rounds' plus about one in HELDOUT_EVERY of the new ones."""
        with self._lock:
            settings = json.loads(files.settings.read_text())
            if settings["training_job"]:
                return {"status": "training", "job": settings["training_job"]}
            stems = sorted(self._index(files))
            if len(stems) < 2:
                raise UserError(
                    f"{len(stems)} annotation(s) of this project reached the studio; training needs at least 2 "
                    "(one held out to compare the new model with the served one)"
                )
            held = [s for s in settings["heldout"] if s in stems]
            held += [s for s in stems if s not in held and _held(s) and len(held) < len(stems) - 1]
            held = held or stems[-1:]
            data = self._round(files, settings, stems, held)
            served = settings["served"]
            start = self.studio._adapter_path(owner, served) if served else None
            try:
                job = self.studio.submit(
                    owner, str(data), settings["task"], settings["backbone"], settings["method"],
                    settings["steps"], 1e-3, 1e-4, 2, init_adapter=start,
                )  # fmt: skip
            finally:
                data.unlink(missing_ok=True)  # the job keeps its own copy
            settings.update(training_job=job, heldout=held, since_training=0)
            write_json(files.settings, settings)
        log.info(
            "connection %s…: training job %s queued on %d pairs (%d held out)",
            connection[:6],
            job,
            len(stems),
            len(held),
        )
        return {"status": "queued", "job": job}

    def _round(self, files: LabelStudioFiles, settings: dict, stems: list[str], held: list[str]) -> Path:
        """The pairs as a dataset zip: the training pairs, and the held-out ones under heldout/."""
        kind = TASKS[settings["task"]].mask
        files.rounds.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=files.rounds) as tmp:
            for stem in stems:
                dest = Path(tmp) / ("heldout" if stem in held else "") / "x"
                for sub in ("images", "masks"):
                    (dest.parent / sub).mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(files.pairs / sub / f"{stem}.png", dest.parent / sub / f"{stem}.png")
            for folder in (Path(tmp), Path(tmp) / "heldout"):
                kind.write_classes(folder, kind.classes(settings["labels"]))
            return zip_folder(Path(tmp), files.rounds / f"round-{new_token()[:12]}.zip")

    def _settle(self, connection: str, files: LabelStudioFiles, settings: dict) -> dict:
        """A finished training job decided on: its adapter served when its held-out score is not
        worse than the served model's on the same images, else the reason kept and logged."""
        job = settings.get("training_job")
        if not job:
            return settings
        owner = files.folder.parent.parent.name
        try:
            status = self.studio.status(owner, job)
        except UserError:
            status = {"status": "gone", "error": "the job no longer exists"}
        if status["status"] not in FINISHED and status["status"] != "gone":
            return settings
        with self._lock:
            settings = json.loads(files.settings.read_text())
            if settings.get("training_job") != job:
                return settings
            before = self._version(settings)
            served, reason = self._decide(job, status, settings)
            if served:
                settings["served"] = job
            settings["training_job"] = None
            settings["decisions"] = [*settings["decisions"], {"job": job, "served": served, "reason": reason}][
                -DECISIONS_KEPT:
            ]
            write_json(files.settings, settings)
        log.info("connection %s…: %s (model_version %s -> %s)", connection[:6], reason, before, self._version(settings))
        return settings

    def _decide(self, job: str, status: dict, settings: dict) -> tuple[bool, str]:
        old = self._version(settings)
        if status["status"] != "done":
            why = f": {status['error']}" if status.get("error") else ""
            return False, f"training job {job} ended {status['status']}{why}; {old} stays served"
        adapted = status.get("adapted") or {}
        baseline = (status.get("previous") if settings["served"] else None) or status.get("frozen") or {}
        metric = next((m for m in ("iou", "miou", "dice", "pixel_acc") if m in adapted and m in baseline), None)
        if metric is None:
            return False, f"training job {job} reported no held-out score to compare; {old} stays served"
        new, was = float(adapted[metric]), float(baseline[metric])
        if new >= was:
            return True, f"training job {job}: held-out {metric} {new:.4f} >= {was:.4f} of {old}; it is served now"
        return False, f"training job {job}: held-out {metric} {new:.4f} < {was:.4f} of {old}; {old} stays served"

    @staticmethod
    def _version(settings: dict) -> str:
        return settings["served"] or f"frozen-{settings['backbone']}"

    # --- reading from Label Studio ----------------------------------------------------------------
    def _token(self, connection: str, files: LabelStudioFiles) -> str:
        if connection in self._tokens:
            return self._tokens[connection]
        if files.token.is_file():
            return files.token.read_text().strip()
        raise UserError(
            "the API token of this connection was kept in memory only and the studio has restarted since: "
            "connect the project again (or choose keep_token 'disk')"
        )

    def _fetch_image(self, settings: dict, token: str, task: dict) -> np.ndarray:
        """A task's image from the Label Studio server given (never another host), with the token,
        within the upload limits, checked like every uploaded image."""
        import httpx

        from adapt.data import DatasetError, load_image

        tid = task.get("id")
        data = task.get("data")
        ref = data.get(settings["image_key"]) if isinstance(data, dict) else None
        if not isinstance(ref, str) or not ref or len(ref) > MAX_URL:
            raise BadRequest(f"task {tid}: its data has no {settings['image_key']!r} field (the image's URL)")
        url = urljoin(settings["url"] + "/", ref)
        home = urlparse(settings["url"])
        if (urlparse(url).scheme, urlparse(url).netloc) != (home.scheme, home.netloc):
            raise UserError(f"task {tid}: its image {ref[:200]!r} is not on the Label Studio server {settings['url']}")
        limit = self.limits.upload_mb << 20
        headers = _client(settings["url"], token)._client_wrapper.get_headers()  # the SDK's own authorisation
        try:
            with httpx.stream("GET", url, headers=headers, timeout=TIMEOUT_S, follow_redirects=False) as r:
                if r.status_code != 200:
                    raise UserError(f"task {tid}: {_refused(r.status_code, f'its image {ref[:200]!r}')}")
                body = b""
                for chunk in r.iter_bytes():
                    body += chunk
                    if len(body) > limit:
                        raise UserError(f"task {tid}: its image is over {self.limits.upload_mb} MB")
        except httpx.HTTPError as e:
            raise UserError(f"task {tid}: cannot fetch its image from Label Studio ({type(e).__name__})") from None
        with tempfile.TemporaryDirectory(dir=self.paths.uploads) as tmp:
            path = Path(tmp) / ("image" + Path(urlparse(url).path).suffix[:8])
            path.write_bytes(body)
            try:
                return load_image(path, max_pixels=self.limits.max_pixels)
            except DatasetError as e:
                why = e.problems[0][1] if e.problems else str(e)
                raise UserError(f"task {tid}: its image {ref[:200]!r}: {why}") from None


_made = threading.Lock()


def backend_for(studio: Studio) -> LabelStudioBackend:
    """The studio's one backend: the page's Label Studio tab and the routes share it (and with it the
    tokens kept in memory)."""
    with _made:
        if getattr(studio, "labelstudio", None) is None:
            studio.labelstudio = LabelStudioBackend(studio)
        return studio.labelstudio


def describe(status: dict) -> str:
    """A connection's state as the page shows it."""
    lines = [
        f"**Label Studio project {status['project']}** at {status['url']} ({', '.join(status['labels'])}): "
        f"serving **{status['model_version']}**, {status['pairs']} annotation(s) learnt, "
        f"{status['since_training']} since the last training; API token {status['token']}.",
        f"Model URL to paste in Label Studio: the studio's address + `{status['backend_path']}`; webhook URL: "
        f"the same + `/webhook`.",
    ]
    if status["training_job"]:
        lines.append(f"Training job `{status['training_job']}` is running (see the Progress tab).")
    lines += [
        f"- {'served' if d['served'] else 'kept the served model'}: {d['reason']}" for d in status["decisions"][-5:]
    ]
    return "\n\n".join(lines)


def add_routes(app, studio: Studio) -> LabelStudioBackend:
    """The owner's routes (beside app/rest.py's) and Label Studio's, on Gradio's FastAPI app."""
    from starlette.concurrency import run_in_threadpool

    backend = backend_for(studio)
    json_route(app, "labelstudio/connect", CONNECT_FIELDS, backend.connect, blocking=True)
    json_route(app, "labelstudio/status", ("owner", "connection"), backend.status, blocking=True)
    json_route(app, "labelstudio/disconnect", ("owner", "connection"), backend.disconnect)

    async def health(request):
        connection = request.path_params["connection"]
        return await answered("labelstudio health", lambda: run_in_threadpool(backend.health, connection))

    def protocol(name: str):
        async def endpoint(request):
            async def respond():
                data = await read_json(request, MAX_PROTOCOL_BODY, example='{"project": ..., "tasks": [...]}')
                return await run_in_threadpool(getattr(backend, name), request.path_params["connection"], data)

            return await answered(f"labelstudio {name}", respond)

        return endpoint

    app.add_route(f"{ROUTE}/{{connection}}/health", health, methods=["GET"], include_in_schema=False)
    app.add_route(f"{ROUTE}/{{connection}}/", health, methods=["GET"], include_in_schema=False)
    for name in ("setup", "predict", "webhook", "train"):
        app.add_route(f"{ROUTE}/{{connection}}/{name}", protocol(name), methods=["POST"], include_in_schema=False)
    return backend
