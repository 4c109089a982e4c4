"""Write the studio's example images (procedurally generated scenes, adapt.data.synthetic).

    python assets/examples/make_examples.py            # rewrites assets/examples/*.jpg

colours.jpg is the open-vocabulary example: four objects whose colours the bundled tiny-clip names
zero-shot (the Preview tab's default classes are these colours). shapes.jpg is a scene of the
domain tiny-sam was trained on; camouflage.jpg and cells.jpg are domains it fails on until adapted.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from adapt.data.synthetic import make_scene

HERE = Path(__file__).resolve().parent
SIZE = 320
EXAMPLES = {  # file: (domain, seed)
    "colours.jpg": ("source", 19),
    "shapes.jpg": ("source", 3),
    "camouflage.jpg": ("camouflage", 5),
    "cells.jpg": ("grayscale-noise", 2),
}


def main() -> None:
    for name, (domain, seed) in EXAMPLES.items():
        scene = make_scene(np.random.default_rng(seed), size=SIZE, domain=domain)
        Image.fromarray(scene.image).save(HERE / name, quality=92)
        print(name, domain, seed, ", ".join(f"{o.colour} {o.shape}" for o in scene.objects))


if __name__ == "__main__":
    main()
