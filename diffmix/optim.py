"""Adam without ``torch._dynamo``: torch's Adam, stepped by a loop of our own.

Every torch optimiser imports ``torch._dynamo`` (with sympy) the first time it adds a
parameter group, zeroes gradients or steps, through its ``torch._disable_dynamo``
decorators: about 0.6-0.9 s of CPU that a reference master, whose only optimiser this is,
paid inside its fit. :class:`Adam` is :class:`torch.optim.Adam` (same arguments, state and
``state_dict``; LR schedulers accept it) whose hot methods skip those decorators, and
whose step for the plain configuration (no weight decay, amsgrad, maximize, capturable,
differentiable, fused or foreach, real dense tensors) is torch's single-tensor update,
operation for operation: the same values bit for bit. Any other configuration steps
through torch's own code.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


def _undecorated(method: Any) -> Any:
    """The function under ``torch._disable_dynamo``'s wrapper (``functools.wraps`` keeps it)."""
    return getattr(method, "__wrapped__", method)


_ADD_GROUP = _undecorated(torch.optim.Optimizer.add_param_group)
_ZERO_GRAD = _undecorated(torch.optim.Optimizer.zero_grad)


class Adam(torch.optim.Adam):
    """:class:`torch.optim.Adam` without importing ``torch._dynamo`` (module notes).

    Args: as :class:`torch.optim.Adam`.

    >>> p = torch.nn.Parameter(torch.ones(3))
    >>> opt = Adam([p], lr=0.1)
    >>> p.sum().backward(); opt.step()
    >>> [round(v, 4) for v in p.tolist()]
    [0.9, 0.9, 0.9]
    """

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        _ADD_GROUP(self, param_group)

    def zero_grad(self, set_to_none: bool = True) -> None:
        _ZERO_GRAD(self, set_to_none)

    def _plain(self, group: dict[str, Any]) -> bool:
        return not (
            group["weight_decay"] or group["amsgrad"] or group["maximize"] or group["capturable"]
            or group["differentiable"] or group["fused"] or group["foreach"]
            or isinstance(group["lr"], Tensor) or any(isinstance(b, Tensor) for b in group["betas"])
            or any(p.grad is not None and (p.grad.is_sparse or torch.is_complex(p)) for p in group["params"])
        )

    def step(self, closure=None):  # noqa: ANN001, ANN201
        if not all(self._plain(g) for g in self.param_groups):
            return super().step(closure)
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        with torch.no_grad():
            for group in self.param_groups:
                params: list[Tensor] = []
                grads: list[Tensor] = []
                exp_avgs: list[Tensor] = []
                exp_avg_sqs: list[Tensor] = []
                steps: list[Tensor] = []
                self._init_group(group, params, grads, exp_avgs, exp_avg_sqs, [], steps)
                beta1, beta2 = group["betas"]
                lr, eps = group["lr"], group["eps"]
                # torch.optim.adam._single_tensor_adam, the branch these options take
                for param, grad, exp_avg, exp_avg_sq, step_t in zip(
                    params, grads, exp_avgs, exp_avg_sqs, steps, strict=True
                ):
                    step_t += 1
                    exp_avg.lerp_(grad, 1 - beta1)
                    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                    step = step_t.item()
                    bias_correction1 = 1 - beta1**step
                    bias_correction2 = 1 - beta2**step
                    step_size = lr / bias_correction1
                    bias_correction2_sqrt = bias_correction2**0.5
                    denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps)
                    param.addcdiv_(exp_avg, denom, value=-step_size)
        return loss
