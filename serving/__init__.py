"""serving package of pinsage_tf (see README.md).

Importing pinsage_tf first sets TF_USE_LEGACY_KERAS=1.
"""

import pinsage_tf  # noqa: F401  (must run before TensorFlow is imported)
