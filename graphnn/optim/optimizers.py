"""Optimizers as update ops in the graph: a training step (forward, backward, update) is one graph
and one ``Session.run``.

``optimizer.build(loss, params)`` differentiates ``loss``, optionally clips and accumulates the
gradients, and returns a ``TrainStep`` whose ``apply`` node updates every parameter and slot with
``assign`` ops. The learning rate and the step count are variables (``optimizer.lr``,
``optimizer.step``), so schedules change the rate without rebuilding and checkpoints save both.
Update rules follow PyTorch's ``torch.optim`` documentation line by line.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from graphnn.autodiff import gradients
from graphnn.errors import GraphError
from graphnn.ir import Node
from graphnn.ops import api as F


@dataclass
class TrainStep:
    """``apply`` runs one full update; with gradient accumulation over k micro-batches,
    ``accumulate`` adds a micro-batch's gradients and ``apply`` adds the k-th and updates."""

    apply: Node
    accumulate: Node | None
    loss: Node
    steps_per_update: int


class Optimizer:
    """Base: gradients, clipping, accumulation; subclasses write ``_update(p, g, t) -> assigns``.

    Args:
        lr: learning rate.
        clip_value: clamp each gradient element to [-clip_value, clip_value].
        clip_norm: rescale all gradients together so their global L2 norm is at most clip_norm
            (``torch.nn.utils.clip_grad_norm_``: scale = min(1, clip_norm / (norm + 1e-6))).
        accumulate_steps: average gradients over this many micro-batches per update.
    """

    def __init__(self, lr: float, clip_value: float | None = None, clip_norm: float | None = None,
                 accumulate_steps: int = 1) -> None:
        if lr < 0:
            raise ValueError(f"learning rate must be non-negative, got {lr}")
        if accumulate_steps < 1:
            raise ValueError("accumulate_steps must be at least 1")
        self.base_lr, self.clip_value, self.clip_norm = lr, clip_value, clip_norm
        self.accumulate_steps = accumulate_steps
        self.lr_var: Node | None = None
        self.step_var: Node | None = None
        self.slots: list[Node] = []

    # -- building --------------------------------------------------------------------------------
    def build(self, loss: Node, params: Sequence[Node]) -> TrainStep:
        """Add the update ops for minimising ``loss`` over ``params`` (variable nodes)."""
        if self.lr_var is not None:
            raise GraphError("this optimizer was already built; create one per model")
        if not params:
            raise GraphError("no trainable parameters to optimise")
        graph = loss.graph
        assert graph is not None
        with graph:
            dtype = params[0].dtype.np
            self.lr_var = F.variable(np.array(self.base_lr, dtype), "optimizer.lr", trainable=False)
            self.step_var = F.variable(np.array(0, dtype), "optimizer.step", trainable=False)
            grads = [g if g is not None else F.zeros_like(p)
                     for p, g in zip(params, gradients(loss, list(params)))]
            accumulate = None
            if self.accumulate_steps > 1:
                accs = [self._slot(p, "accum") for p in params]
                accumulate = F.group(*[F.assign_add(a, g) for a, g in zip(accs, grads)])
                k = float(self.accumulate_steps)
                grads = [F.div(F.add(a, g), k) for a, g in zip(accs, grads)]
                resets = [F.assign(a, F.zeros_like(a)) for a in accs]
            else:
                resets = []
            grads = self._clip(grads)
            t = F.add(self.step_var, 1.0)  # this update's step number, 1-based
            updates = [u for p, g in zip(params, grads) for u in self._update(p, g, t)]
            apply = F.group(*updates, *resets, F.assign(self.step_var, t), name="train_step")
        return TrainStep(apply, accumulate, loss, self.accumulate_steps)

    def _clip(self, grads: list[Node]) -> list[Node]:
        if self.clip_value is not None:
            grads = [F.clip(g, -self.clip_value, self.clip_value) for g in grads]
        if self.clip_norm is not None:
            total = F.sqrt(F.add_n([F.sum(F.mul(g, g)) for g in grads]))
            scale = F.minimum(F.div(self.clip_norm, F.add(total, 1e-6)), 1.0)
            grads = [F.mul(g, scale) for g in grads]
        return grads

    def _slot(self, p: Node, kind: str, fill: float = 0.0) -> Node:
        v = F.variable(np.full(p.shape, fill, p.dtype.np), f"optimizer.{kind}.{p.name}",
                       trainable=False)
        self.slots.append(v)
        return v

    def _update(self, p: Node, g: Node, t: Node) -> list[Node]:
        raise NotImplementedError

    # -- runtime ---------------------------------------------------------------------------------
    def set_lr(self, session: object, lr: float) -> None:
        """Change the learning rate used by the next runs of ``session``."""
        if self.lr_var is None:
            raise GraphError("build the optimizer before setting its learning rate")
        session.load_variables({self.lr_var: lr})  # type: ignore[attr-defined]

    def get_lr(self, session: object) -> float:
        assert self.lr_var is not None
        return float(session.run(self.lr_var))  # type: ignore[attr-defined]


class SGD(Optimizer):
    """Stochastic gradient descent with momentum, dampening, Nesterov and L2 weight decay.

    Math:  g += wd p; b = mu b + (1 - dampening) g (b = g on the first step); d = g + mu b with
           nesterov, else b; p -= lr d.   Ref: torch.optim.SGD; Sutskever et al. 2013
    """

    def __init__(self, lr: float = 0.01, momentum: float = 0.0, dampening: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False, **kw: object) -> None:
        super().__init__(lr, **kw)  # type: ignore[arg-type]
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")
        self.momentum, self.dampening = momentum, dampening
        self.weight_decay, self.nesterov = weight_decay, nesterov

    def _update(self, p: Node, g: Node, t: Node) -> list[Node]:
        if self.weight_decay:
            g = F.add(g, F.mul(p, self.weight_decay))
        out = []
        if self.momentum:
            buf = self._slot(p, "momentum")
            later = F.add(F.mul(buf, self.momentum), F.mul(g, 1 - self.dampening))
            new_buf = F.where(F.equal(t, 1.0), g, later)
            out.append(F.assign(buf, new_buf))
            g = F.add(g, F.mul(new_buf, self.momentum)) if self.nesterov else new_buf
        assert self.lr_var is not None
        return out + [F.assign(p, F.sub(p, F.mul(g, self.lr_var)))]


class Adam(Optimizer):
    """Adam with bias correction; ``weight_decay`` adds L2 to the gradient (as torch.optim.Adam).

    Math:  m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2; p -= lr m/(1-b1^t) / (sqrt(v/(1-b2^t)) + eps)
    Ref:   Kingma & Ba 2015; torch.optim.Adam
    """

    decoupled = False

    def __init__(self, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, **kw: object) -> None:
        super().__init__(lr, **kw)  # type: ignore[arg-type]
        self.betas, self.eps, self.weight_decay = betas, eps, weight_decay

    def _update(self, p: Node, g: Node, t: Node) -> list[Node]:
        b1, b2 = self.betas
        assert self.lr_var is not None
        if self.weight_decay and not self.decoupled:
            g = F.add(g, F.mul(p, self.weight_decay))
        m, v = self._slot(p, "m"), self._slot(p, "v")
        m_new = F.add(F.mul(m, b1), F.mul(g, 1 - b1))
        v_new = F.add(F.mul(v, b2), F.mul(F.mul(g, g), 1 - b2))
        m_hat = F.div(m_new, F.sub(1.0, F.pow(F.full_like(t, b1), t)))
        v_hat = F.div(v_new, F.sub(1.0, F.pow(F.full_like(t, b2), t)))
        base = p
        if self.weight_decay and self.decoupled:  # AdamW: p *= 1 - lr wd, before the Adam step
            base = F.mul(p, F.sub(1.0, F.mul(self.lr_var, self.weight_decay)))
        step = F.div(m_hat, F.add(F.sqrt(v_hat), self.eps))
        return [F.assign(m, m_new), F.assign(v, v_new),
                F.assign(p, F.sub(base, F.mul(step, self.lr_var)))]


class AdamW(Adam):
    """Adam with decoupled weight decay (default 0.01).  Ref: Loshchilov & Hutter 2019;
    torch.optim.AdamW"""

    decoupled = True

    def __init__(self, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.01, **kw: object) -> None:
        super().__init__(lr, betas, eps, weight_decay, **kw)


class RMSprop(Optimizer):
    """RMSprop, optionally centred and with momentum.

    Math:  s = a s + (1-a) g^2; centred: ga = a ga + (1-a) g, avg = sqrt(s - ga^2) + eps, else
           sqrt(s) + eps; momentum: b = mu b + g/avg, p -= lr b; else p -= lr g/avg.
    Ref:   Hinton's lecture 6e; torch.optim.RMSprop
    """

    def __init__(self, lr: float = 0.01, alpha: float = 0.99, eps: float = 1e-8,
                 weight_decay: float = 0.0, momentum: float = 0.0, centered: bool = False,
                 **kw: object) -> None:
        super().__init__(lr, **kw)  # type: ignore[arg-type]
        self.alpha, self.eps, self.weight_decay = alpha, eps, weight_decay
        self.momentum, self.centered = momentum, centered

    def _update(self, p: Node, g: Node, t: Node) -> list[Node]:
        a = self.alpha
        assert self.lr_var is not None
        if self.weight_decay:
            g = F.add(g, F.mul(p, self.weight_decay))
        sq = self._slot(p, "square_avg")
        sq_new = F.add(F.mul(sq, a), F.mul(F.mul(g, g), 1 - a))
        out = [F.assign(sq, sq_new)]
        if self.centered:
            ga = self._slot(p, "grad_avg")
            ga_new = F.add(F.mul(ga, a), F.mul(g, 1 - a))
            out.append(F.assign(ga, ga_new))
            avg = F.add(F.sqrt(F.sub(sq_new, F.mul(ga_new, ga_new))), self.eps)
        else:
            avg = F.add(F.sqrt(sq_new), self.eps)
        step = F.div(g, avg)
        if self.momentum:
            buf = self._slot(p, "momentum")
            step = F.add(F.mul(buf, self.momentum), step)
            out.append(F.assign(buf, step))
        return out + [F.assign(p, F.sub(p, F.mul(step, self.lr_var)))]


class Adagrad(Optimizer):
    """Adagrad: s += g^2; p -= lr / (1 + (t-1) lr_decay) * g / (sqrt(s) + eps).

    Ref: Duchi et al. 2011; torch.optim.Adagrad
    """

    def __init__(self, lr: float = 0.01, lr_decay: float = 0.0, weight_decay: float = 0.0,
                 initial_accumulator_value: float = 0.0, eps: float = 1e-10,
                 **kw: object) -> None:
        super().__init__(lr, **kw)  # type: ignore[arg-type]
        self.lr_decay, self.weight_decay = lr_decay, weight_decay
        self.initial, self.eps = initial_accumulator_value, eps

    def _update(self, p: Node, g: Node, t: Node) -> list[Node]:
        assert self.lr_var is not None
        if self.weight_decay:
            g = F.add(g, F.mul(p, self.weight_decay))
        s = self._slot(p, "sum", self.initial)
        s_new = F.add(s, F.mul(g, g))
        clr = F.div(self.lr_var, F.add(F.mul(F.sub(t, 1.0), self.lr_decay), 1.0))
        step = F.mul(F.div(g, F.add(F.sqrt(s_new), self.eps)), clr)
        return [F.assign(s, s_new), F.assign(p, F.sub(p, step))]


OPTIMIZERS: dict[str, Callable[[], Optimizer]] = {"sgd": SGD, "adam": Adam, "adamw": AdamW,
                                          "rmsprop": RMSprop, "adagrad": Adagrad}


def get(name_or_opt: str | Optimizer) -> Optimizer:
    """An optimizer instance from a name ("adam") or the instance itself."""
    if isinstance(name_or_opt, Optimizer):
        return name_or_opt
    try:
        return OPTIMIZERS[name_or_opt.lower()]()
    except KeyError:
        raise ValueError(f"unknown optimizer {name_or_opt!r}; known: {sorted(OPTIMIZERS)}") \
            from None
