"""GrACE (arXiv 2509.09438): confidence as the probability of a learned ``<CNF>`` token after the answer.

``config`` (GraceConfig), ``token`` (the ``<CNF>`` row), ``readout`` (the one
read-out computation, the generation hook), ``objective`` (training) and
``method`` (the registered ``grace`` method).
"""

from .config import GraceConfig
from .method import Grace, train_grace
from .readout import CNF_TOKEN, GraceHook, cnf_token_id, free_readout, offline_confidence, readout_step
from .token import add_cnf_token

__all__ = ["CNF_TOKEN", "Grace", "GraceConfig", "GraceHook", "add_cnf_token", "cnf_token_id", "free_readout",
           "offline_confidence", "readout_step", "train_grace"]
