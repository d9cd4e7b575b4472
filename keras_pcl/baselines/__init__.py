"""The online-distillation methods PCL is compared with (spec section 9).

Each is a `keras.Model` with the same API as `keras_pcl.PeerCollaborativeModel`:
`compile` without a loss, `fit` on raw pixels, per-branch accuracies in the
logs, `get_peer(j)` / `export_peer` for the network that deploys, `.keras`
saving. They share `keras_pcl.multi_branch.MultiBranchModel` with PCL, and
their losses live in `keras_pcl.losses`.

| name | class | shared trunk | views | teacher |
| --- | --- | --- | --- | --- |
| `vanilla` | `VanillaModel` | - | one | none (the backbone alone) |
| `dml` | `DMLModel` | no | one | every other network |
| `kdcl` | `KDCLModel` | no | one per network | mean of logits |
| `one` | `ONEModel` | yes | one | gated ensemble |
| `cl_ilr` | `CLILRModel` | yes | one | mean of the other branches |
| `okddip` | `OKDDipModel` | yes | one | attention-weighted peers; leader deploys |

PCL's ablations are switches of `PeerCollaborativeModel`
(`distill_from_ensemble`, `distill_from_mean_teachers`,
`views_per_peer`).
"""

import difflib

from keras_pcl.baselines.cl_ilr import CLILRModel
from keras_pcl.baselines.cl_ilr import scale_gradient
from keras_pcl.baselines.dml import DMLModel
from keras_pcl.baselines.kdcl import KDCLModel
from keras_pcl.baselines.okddip import OKDDipModel
from keras_pcl.baselines.one import ONEModel
from keras_pcl.baselines.vanilla import VanillaModel

BASELINES = {
    "vanilla": VanillaModel,
    "dml": DMLModel,
    "kdcl": KDCLModel,
    "one": ONEModel,
    "cl_ilr": CLILRModel,
    "okddip": OKDDipModel,
}


def get(name):
    """The baseline class registered as `name` (a key of `BASELINES`).

    Raises:
        ValueError: for an unknown name, listing the known ones.
    """
    if name not in BASELINES:
        close = difflib.get_close_matches(str(name), list(BASELINES), n=3)
        hint = f" Did you mean {close}?" if close else ""
        raise ValueError(
            f"Unknown baseline {name!r}.{hint} Known baselines: {sorted(BASELINES)}."
        )
    return BASELINES[name]


__all__ = [
    "BASELINES",
    "CLILRModel",
    "DMLModel",
    "KDCLModel",
    "ONEModel",
    "OKDDipModel",
    "VanillaModel",
    "get",
    "scale_gradient",
]
