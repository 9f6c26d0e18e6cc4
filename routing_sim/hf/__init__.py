"""routing_sim inside Hugging Face transformers models (the ``hf`` extra: torch, transformers).

>>> import routing_sim as rs
>>> rs.hf.register("routing_sim")
'routing_sim'

After it, ``from_config(..., attn_implementation="routing_sim")``,
``from_pretrained(path, attn_implementation="routing_sim")`` or
``model.set_attn_implementation("routing_sim")`` run every attention call of the model as
messages between token nodes (a decoding step nobody records takes the lean step of
:mod:`routing_sim.hf.lean`: the same bits without a Run); ``with rs.hf.record() as rec:``
keeps the runs. A family
whose attention does not go through transformers' attention interface is refused when the
model is built (:class:`BypassError`), and a model built on a config object that a model of
another implementation holds warns (:class:`SharedConfigWarning`). See
docs/en/transformers.md.
"""

from __future__ import annotations

try:
    import torch  # noqa: F401
    import transformers  # noqa: F401
except ImportError as error:                                          # pragma: no cover
    raise ImportError("routing_sim.hf needs torch and transformers: pip install "
                      "'routing_sim[hf]' (CPU torch: pip install torch==2.13.0)") from error

from .admit import BypassError, SharedConfigWarning
from .backend import register, registered_options
from .record import AttentionRecord, Recorder, record

__all__ = ["AttentionRecord", "BypassError", "Recorder", "SharedConfigWarning", "record",
           "register", "registered_options"]
