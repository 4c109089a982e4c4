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
