"""How a whole-model sparsity is shared among the layers: one global threshold on each weight's estimated share
of its layer's relative output error.

Removing weight i of neuron m from a layer with input X (N x P) and re-fitting the neuron's other weights by least
squares raises the error of its response w_m^T X by w_im^2 / [H^-1]_ii, H = X X^T (the optimal brain surgeon's
saliency; Hassibi and Stork 1993, as SparseGPT uses it, Frantar and Alistarh 2023). Divided by the layer's response
energy ||W^T X||_F^2, it is the weight's share of the layer's relative squared error. One threshold over every
selected weight of the model (the weights below it are deemed removable) gives each layer the sparsity

    s_l = |{(i, m) in layer l : w_im^2 / ([H_l^-1]_ii ||W_l^T X_l||_F^2) < tau}| / (weights of layer l),

with tau chosen so that the layers together reach the model's target, no layer's share above MAX_SHARE (a layer
emptied breaks the network whatever the estimate says; the threshold then rises until the others make up for
it). Every removed weight then costs about the
same relative error wherever it is: a layer whose weights are redundant for its inputs (a wide 3 x 3 conv) gives
many, a small layer every weight of which matters (the first conv, the classifier) gives few. The sparsities are
targets for the layers' own programs (Net-Trim chooses which weights, and fits the rest), found in one pass of
solves instead of a search over whole trims. The estimate ignores how removed weights interact; it only allocates.

H gets a ridge of RIDGE times its mean diagonal (inputs that never vary leave it singular); a grouped conv's
neurons use their group's input (Layer.group_inputs); biases are not weights here (model sparsity counts weights).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .layers import Layer

#: The ridge of H, relative to its mean diagonal (SparseGPT's damping is 0.01).
RIDGE = 0.01
#: The largest sparsity a layer is given.
MAX_SHARE = 0.99


def saliencies(layer: Layer, W: np.ndarray, X: np.ndarray) -> np.ndarray:
    """(N - bias, M): each weight's w_im^2 / [H^-1]_ii over the layer's response energy ||W^T X||_F^2 (module
    docstring), the bias row apart."""
    rows = W.shape[0] - layer.has_bias
    scores = np.empty((rows, W.shape[1]))
    for columns, X_group in zip(layer.group_columns(), layer.group_inputs(X), strict=True):
        H = X_group @ X_group.T
        H[np.diag_indices_from(H)] += RIDGE * max(float(np.trace(H)) / len(H), 1e-300)
        inverse_diagonal = np.diag(np.linalg.inv(H))[:rows]
        scores[:, columns] = W[:rows, columns] ** 2 / inverse_diagonal[:, None]
    energy = float(np.linalg.norm(layer.response(W, X)) ** 2)
    return scores / max(energy, 1e-300)


#: The budget g that reaches a share, over the estimated error of its removed weights: 1.8 to 4.0, median 2.6, on
#: the 20 layers of a CIFAR-10 ResNet-20 at 70% (the estimate ignores how removed weights interact, and l1 is not
#: l0). Only the budget searches' first guess depends on it.
FIRST_GUESS = 2.5


@dataclass
class Allocation:
    """Each layer's share of the model's sparsity, and a first guess of the budget g that reaches it: FIRST_GUESS
    times the relative error its removed weights are estimated to cost (the square root of their saliencies'
    sum)."""

    shares: dict[str, float]
    budgets: dict[str, float]


def allocate(layers: list[Layer], weights: dict[str, np.ndarray], inputs: dict[str, np.ndarray],
             target: float) -> Allocation:
    """Each layer's sparsity for a model sparsity `target` (the fraction of all the layers' weights to remove): a
    global threshold on the weights' saliencies (module docstring), each share at most MAX_SHARE. `weights` are
    the layers' W (N x M, the bias as the last row when the layer has one) and `inputs` their calibration inputs
    X (N x P)."""
    scores = {layer.name: np.sort(saliencies(layer, weights[layer.name], inputs[layer.name]), axis=None)
              for layer in layers}
    sizes = {name: score.size for name, score in scores.items()}
    wanted = target * sum(sizes.values())

    def removed(threshold: float) -> dict[str, int]:
        return {name: min(int(np.searchsorted(score, threshold, side="right")), int(MAX_SHARE * sizes[name]))
                for name, score in scores.items()}

    candidates = np.unique(np.concatenate(list(scores.values())))
    low, high = 0, candidates.size - 1  # the least threshold whose capped removals reach the target
    if sum(removed(candidates[high]).values()) < wanted:
        low = high
    while low < high:
        middle = (low + high) // 2
        if sum(removed(candidates[middle]).values()) >= wanted:
            high = middle
        else:
            low = middle + 1
    counts = removed(candidates[low])
    guesses = {name: FIRST_GUESS * float(np.sqrt(scores[name][:count].sum())) for name, count in counts.items()}
    return Allocation({name: count / sizes[name] for name, count in counts.items()}, guesses)
