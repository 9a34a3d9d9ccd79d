"""pinsage_tf: PinSage (Ying et al., KDD'18) in TensorFlow 2 / Keras 2.

Importing this package makes sure TensorFlow will use Keras 2 (``tf-keras``),
which tensorflow-recommenders 0.7.7 needs: ``TF_USE_LEGACY_KERAS=1`` must be in
the environment before TensorFlow is first imported. This is the one place the
library touches the environment, and it only writes that variable.
"""

import os as _os
import sys as _sys

if "tensorflow" in _sys.modules and _os.environ.get("TF_USE_LEGACY_KERAS") != "1":
    raise ImportError(
        "pinsage_tf needs Keras 2 (tf-keras), but TensorFlow was imported before "
        "pinsage_tf without TF_USE_LEGACY_KERAS=1. Import pinsage_tf first, or "
        "export TF_USE_LEGACY_KERAS=1 before starting Python."
    )
_os.environ["TF_USE_LEGACY_KERAS"] = "1"

__version__ = "0.1.0"
