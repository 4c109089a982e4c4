"""adapt: parameter-efficient adaptation of SAM and CLIP for segmentation.

The library behind the studio: backbones (segment-anything SAM, open_clip CLIP), adapter methods
(PARSER, COBOT, H-CLIP and baselines) behind one interface, and the adapter file format.
No UI code lives here.
"""

__version__ = "0.1.0"

from adapt.backbones import BACKBONES, Backbone, build_backbone  # noqa: E402,F401
from adapt.methods import METHODS, Handle, attach  # noqa: E402,F401
