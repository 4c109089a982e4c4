"""Tasks: what is predicted and how it is scored. Each task owns its head, loss, predict() and
evaluate(); the trainer and the methods never depend on which task is running."""


def attach_task_head(backbone) -> None:
    """Give a backbone the head its task trains, if it lacks one (CLIP: the open-vocabulary head;
    SAM's mask decoder is part of the model already)."""
    if backbone.family == "clip" and not backbone.heads:
        from adapt.tasks.openvocab import head_for

        head = head_for(backbone)
        device = next(backbone.model.parameters()).device
        backbone.heads.append(head.to(device))


def inference_task(adapter=None, backbone: str | None = None, task: str | None = None, checkpoint=None,
                   download: bool = True):
    """(task, adapter config or None), ready to predict: an adapter (folder or zip) merged into its
    base model, with the task and classes it was trained for; or, with no adapter, the frozen
    `backbone` with its task head (zero-shot). `task` is the fallback when the adapter names none,
    and the frozen model's task (default: by family)."""
    from adapt.train import make_task

    if adapter:
        from adapt.export import load_adapter

        handle = load_adapter(adapter, checkpoint=checkpoint)
        handle.merge()
        model, info = handle.backbone, handle.info
        task = info.get("task") or task
    else:
        from adapt.backbones import build_backbone
        from adapt.weights import resolve_checkpoint

        if not backbone:
            raise ValueError("give an adapter, or a backbone to predict with the frozen model")
        model = build_backbone(backbone, checkpoint=resolve_checkpoint(backbone, checkpoint, download=download))
        attach_task_head(model)
        info, task = None, task or ("openvocab" if model.family == "clip" else "dichotomous")
    model.model.eval()
    options = {"classes": info.get("classes")} if info is not None and task == "openvocab" else {}
    return make_task(task, model, **options), info
