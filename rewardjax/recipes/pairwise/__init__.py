"""Pairwise preference model: ``[prompt, A, B]`` -> P(A better) (DESIGN §3).

One reward-model backbone reads the prompt and both responses in one sequence
(:mod:`rewardjax.data.pairwise`); its scalar head is the logit of P(A better). Training is binary
cross-entropy on every pair in both orders (label 1 for (chosen, rejected), 0 for (rejected,
chosen)) on the shared runtime (Trainer, checkpoints, exact resume). At inference each
comparison is asked in both orders and symmetrised (:class:`rewardjax.runtime.PairwiseScorer`);
the eval and rewardbench modes read the workdir through that scorer, best-of-n runs as knockout
or round-robin (:mod:`rewardjax.eval.pairwise_bon`). It gives no per-response reward, so the
score mode, PPO rewards and serving refuse it with a clear error, and it has no export.
"""

from rewardjax.recipes import Recipe, register
from rewardjax.recipes.pairwise.train import load_scorer, train

NO_EXPORT = (
    "a pairwise preference model has no per-response reward, so it has no HF "
    "sequence-classification form, and the native format's loader scores one (prompt, response) "
    "at a time (it does not know the [prompt, A, B] rendering); use the trained workdir itself "
    "(--config.mode=eval / rewardbench, or recipes.get('pairwise').load_scorer)")

READS = (
    "!loss: the pairwise model trains on binary cross-entropy over both orders; loss.margin, "
    "use_data_margin and center_coef are Bradley-Terry settings",
    "!data.packing: pairs are length-bucketed [prompt, A, B] rows, never packed",
    "!data.shared_prefix: a [prompt, A, B] row already holds the prompt once",
    "!data.pack_segments: pairs are never packed",
)


def export(config, workdir: str, opts: dict) -> dict:
    """Refuses with what to do instead (see :data:`NO_EXPORT`)."""
    raise ValueError(f"--config.mode=export: {NO_EXPORT}")


register(Recipe("pairwise", train=train, load_scorer=load_scorer, export=export, reads=READS))
