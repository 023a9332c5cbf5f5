"""ArmoRM (Wang et al.): per-objective ridge regression on frozen features, verbosity
debiasing and a gating network; scored and exported through the native format."""

from rewardjax.recipes import Recipe, register
from rewardjax.recipes.armorm.export import export, native_scorer
from rewardjax.recipes.armorm.train import train_armorm

# The gate is the trained model: train.steps / train.batch_size are its (and the ablations');
# its optimizer is armorm.stage2.*, the backbone only computes frozen features.
READS = (
    "armorm",
    "!train: ArmoRM trains only the gate on a frozen backbone; the gate's optimizer is "
    "armorm.stage2.*",
    "train.steps", "train.batch_size", "train.tensorboard", "train.resume_changed",
    "!lora: the backbone is frozen and has no adapters",
    "!loss: the gate's loss is plain Bradley-Terry",
    "!data.packing: features are computed per response, never packed",
    "!data.shared_prefix: features are computed per response, never packed",
    "!data.pack_segments: features are computed per response, never packed",
)

register(Recipe("armorm", train=train_armorm, load_scorer=native_scorer, export=export,
                reads=READS))
