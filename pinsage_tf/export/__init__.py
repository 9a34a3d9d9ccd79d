"""SavedModel exports of a trained PinSage model in TensorFlow Serving's layout.

`export_models(export_base, ...)` writes one new version of each model:

    EXPORT_BASE/<model name>/<version>/      integer versions, increasing
        saved_model.pb, variables/, assets/ (id vocabularies)
        assets.extra/export_report.json      what was exported, checks, recall
        assets.extra/tf_serving_warmup_requests  one request per signature
    EXPORT_BASE/models.config                model_config_list of every model
    EXPORT_BASE/models_stock.config          the models without custom ops

Models: `pinsage_retrieval` (ScaNN search, custom ops: loads where `scann` is
imported, e.g. `python -m serving.server`), `pinsage_retrieval_exact` (the
same signatures by brute force, stock ops) and `pinsage_embedder` (stock ops).
`SIGNATURES` documents every signature; unknown ids fail a request with
`tf.errors.InvalidArgumentError` naming them, never a silent zero vector.

Modules: `config` (model names, `ExportConfig`), `versions` (version
directories, publication, config files), `signatures`, `ops`, `search`,
`retrieval`, `embedder`, `warmup`, `checks`, `reuse` (a new version from a
previous version's graph), `artifact_checks` (such a version checked on its
files), `orchestration` (`export_models`).
"""

from pinsage_tf.export.checks import ExportError
from pinsage_tf.export.checks import check_consistency
from pinsage_tf.export.checks import check_pivot_consistency
from pinsage_tf.export.config import ALL_MODELS
from pinsage_tf.export.config import EMBEDDER
from pinsage_tf.export.config import ExportConfig
from pinsage_tf.export.config import RETRIEVAL
from pinsage_tf.export.config import RETRIEVAL_EXACT
from pinsage_tf.export.config import VERIFY_MODES
from pinsage_tf.export.embedder import EmbedderModule
from pinsage_tf.export.embedder import existing_item_inputs
from pinsage_tf.export.embedder import first_traversal_neighborhoods
from pinsage_tf.export.embedder import is_inductive
from pinsage_tf.export.embedder import layer_tables
from pinsage_tf.export.module_parts import StringIndex
from pinsage_tf.export.ops import saved_model_ops
from pinsage_tf.export.orchestration import export_models
from pinsage_tf.export.retrieval import PivotTables
from pinsage_tf.export.retrieval import RetrievalModule
from pinsage_tf.export.search import drop_excluded
from pinsage_tf.export.search import exact_top_k
from pinsage_tf.export.signatures import DEFAULT_SIGNATURE
from pinsage_tf.export.signatures import SIGNATURES
from pinsage_tf.export.versions import MODELS_CONFIG
from pinsage_tf.export.versions import MODELS_STOCK_CONFIG
from pinsage_tf.export.versions import REPORT_FILE
from pinsage_tf.export.versions import list_versions
from pinsage_tf.export.versions import next_version
from pinsage_tf.export.versions import served_scann_settings
from pinsage_tf.export.versions import write_models_config
from pinsage_tf.export.warmup import WARMUP_FILE
from pinsage_tf.export.warmup import replay_warmup_requests
from pinsage_tf.export.warmup import write_warmup_requests

__all__ = [
    "ALL_MODELS", "DEFAULT_SIGNATURE", "EMBEDDER", "MODELS_CONFIG", "MODELS_STOCK_CONFIG",
    "REPORT_FILE", "RETRIEVAL", "RETRIEVAL_EXACT", "SIGNATURES", "VERIFY_MODES", "WARMUP_FILE",
    "EmbedderModule", "ExportConfig", "ExportError", "PivotTables", "RetrievalModule",
    "StringIndex", "check_consistency", "check_pivot_consistency", "drop_excluded",
    "exact_top_k", "existing_item_inputs", "export_models", "first_traversal_neighborhoods",
    "is_inductive", "layer_tables", "list_versions", "next_version", "replay_warmup_requests",
    "saved_model_ops", "served_scann_settings", "write_models_config", "write_warmup_requests",
]
