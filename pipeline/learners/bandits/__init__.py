"""Contextual bandit policies: LinUCB, Diag-LinUCB, linear and Beta-Bernoulli Thompson sampling, ε-greedy,
the shared-parameter hybrid LinUCB and hybrid Thompson sampling over context × item features,
bootstrap exploration (online bagging with Poisson weights) over any of the linear ones, and the
neural-linear policies that explore around a pretrained ranker (a linear model on its last layer,
starting at its predictions).

Every policy is a :class:`~pipeline.learners.base.Policy` with a batch-first array API
(``select`` / ``update``) and the Learner API over feature batches (``predict`` / ``learn``); every
decision comes with its propensity so that it can be logged and evaluated off-policy
(:mod:`pipeline.ope`). ``distribution`` gives a policy's top-1 choice as probabilities over the
candidates (the target policy of off-policy evaluation, :mod:`.offpolicy`, used by
``streamlearn evaluate``), and ``gauges`` its arms, reward rate and running SNIPS value
(:mod:`.monitor`). Contexts come from the event's features (:func:`context_vectors`) and,
optionally, a pretrained neural ranker's embeddings (:func:`hybrid_contexts`, the policies'
``embedding_checkpoint`` option: hybrid offline + online).
"""

from __future__ import annotations

from collections.abc import Callable

from pipeline.learners.bandits.arms import ArmTable
from pipeline.learners.bandits.base import BanditPolicy, context_vectors
from pipeline.learners.bandits.bootstrap import BootstrapPolicy
from pipeline.learners.bandits.contexts import action_vectors
from pipeline.learners.bandits.diag_linucb import DiagLinUCB
from pipeline.learners.bandits.embeddings import EMBEDDING_PARTS, FrozenEmbeddings, hybrid_contexts
from pipeline.learners.bandits.epsilon_greedy import EpsilonGreedy
from pipeline.learners.bandits.hybrid import HybridLinUCB, HybridThompson
from pipeline.learners.bandits.kernels import top_k
from pipeline.learners.bandits.linucb import LinUCB, RidgeArms
from pipeline.learners.bandits.neural_linear import NeuralLinUCB, NeuralThompson
from pipeline.learners.bandits.thompson import BetaThompson, LinearThompson, mc_propensities

__all__ = [
    "EMBEDDING_PARTS",
    "POLICIES",
    "ArmTable",
    "BanditPolicy",
    "BetaThompson",
    "BootstrapPolicy",
    "DiagLinUCB",
    "EpsilonGreedy",
    "FrozenEmbeddings",
    "HybridLinUCB",
    "HybridThompson",
    "LinUCB",
    "LinearThompson",
    "NeuralLinUCB",
    "NeuralThompson",
    "RidgeArms",
    "action_vectors",
    "context_vectors",
    "hybrid_contexts",
    "mc_propensities",
    "register_learners",
    "top_k",
]

#: learner kind -> policy class
POLICIES: dict[str, type[BanditPolicy]] = {
    cls.kind: cls
    for cls in (
        LinUCB,
        DiagLinUCB,
        LinearThompson,
        BetaThompson,
        EpsilonGreedy,
        HybridLinUCB,
        HybridThompson,
        BootstrapPolicy,
        NeuralLinUCB,
        NeuralThompson,
    )
}


def register_learners(register: Callable[[str, Callable], None]) -> None:
    """Hook for :mod:`pipeline.learners.registry`: make every policy buildable by its kind."""
    for kind, cls in POLICIES.items():
        register(kind, cls)
