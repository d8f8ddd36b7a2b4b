"""A causal language model's training loss without its logits: convert()'s surgery on
transformers' *ForCausalLM models (Llama, Mistral, Qwen2, Gemma, GPT-2, ...).

transformers computes `logits = self.lm_head(hidden_states)` and then
`loss = self.loss_function(logits, labels, vocab_size, **kwargs)` (ForCausalLMLoss: the logits
upcast to float32, the labels shifted by one, F.cross_entropy with ignore_index=-100, a sum
divided by num_items_in_batch when it is given). The N x V logits, their float32 copy, the
log-probabilities and their gradient are the largest tensors of a training step.

After patch():
- a forward pre-hook on the model reads the call's labels (and shift_labels, ignore_index,
  num_items_in_batch); in training with autograd on it leaves a request on the head;
- the head (lm_head, re-badged to CausalLMHead: same Parameters, state_dict and hooks) finds the
  request in its own forward and computes the loss there, with linear_cross_entropy on the hidden
  states it is given (already sliced by logits_to_keep): its weight is read inside lm_head's
  forward call, so hooks that gather it (FSDP2's unshard, with lm_head or a tied embedding as its
  own unit) have run. It returns the loss in place of the logits;
- the model's loss_function (set on the instance, as transformers allows) returns that loss when
  it is handed it, and calls the original loss otherwise;
- a forward hook on the model drops the request and the placeholder: the output's logits are
  None (or, with keep_logits, the logits computed without autograd).
Without labels, under no_grad or in eval mode nothing of this runs: the model returns its
logits exactly as before.
"""

from __future__ import annotations

import dataclasses
import inspect

import torch
import torch.nn.functional as TF

from ..ops.linear_cross_entropy import linear_cross_entropy
from .modules import Linear

__all__ = ["CausalLMHead", "patch", "causal_lm_reason"]

_CAUSAL_LM_LOSS = ("transformers.loss.loss_utils", "ForCausalLMLoss")


@dataclasses.dataclass
class _Request:
    """One forward's loss, asked of the head by the model's pre-hook."""

    labels: torch.Tensor
    shift_labels: torch.Tensor | None
    ignore_index: int
    num_items_in_batch: object
    keep_logits: bool
    loss: torch.Tensor | None = None  # set by the head: also the placeholder for its logits
    logits: torch.Tensor | None = None  # with keep_logits
    consumed: bool = False  # the model's loss_function was handed the placeholder


def _causal_lm_loss(hidden, weight, bias, request: _Request) -> torch.Tensor:
    """ForCausalLMLoss's value, from the hidden states: shift, flatten, cross-entropy in float32
    or better, mean (or sum / num_items_in_batch)."""
    ignore_index = request.ignore_index
    shift = request.shift_labels
    if shift is None:
        shift = TF.pad(request.labels, (0, 1), value=ignore_index)[..., 1:]
    target = shift.reshape(-1).to(hidden.device)
    x = hidden.reshape(-1, hidden.shape[-1])
    reduction = "sum" if request.num_items_in_batch is not None else "mean"
    kwargs = dict(linear_bias=bias, ignore_index=ignore_index, reduction=reduction)
    if x.dtype in (torch.float16, torch.bfloat16) and not torch.is_autocast_enabled(
            x.device.type):
        # A float32 loss, as transformers' (its logits are upcast): under autocast at the
        # operands' own dtype the casts are no-ops and the loss comes back in float32.
        with torch.autocast(x.device.type, dtype=x.dtype):
            loss = linear_cross_entropy(x, weight, target, **kwargs)
    else:
        loss = linear_cross_entropy(x, weight, target, **kwargs).float()
    if reduction == "sum":
        n = request.num_items_in_batch
        loss = loss / (n.to(loss.device) if torch.is_tensor(n) else n)
    return loss


class CausalLMHead(Linear):
    """A causal LM's lm_head (a Linear, its Parameters, state_dict and hooks kept): the logits as
    before, or, when the model's pre-hook left a loss request for this forward, the loss
    computed from the hidden states by linear_cross_entropy, returned in place of the logits."""

    _lm_request = None  # class default: a re-badged Linear has no such attribute

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        request = self._lm_request
        if request is None or request.loss is not None:
            return super().forward(input)
        request.loss = _causal_lm_loss(input, self.weight, self.bias, request)
        if request.keep_logits:
            with torch.no_grad():
                request.logits = super().forward(input)
        return request.loss


class _FusedLoss:
    """The model's loss_function after patch(): the head's loss when handed it; the original
    loss for anything else (eval, no_grad, a model called without the request)."""

    def __init__(self, head: CausalLMHead, original) -> None:
        self.head, self.original = head, original

    def __call__(self, logits, labels, vocab_size, **kwargs):
        request = self.head._lm_request
        if request is not None and request.loss is not None:
            if logits is not request.loss:
                raise RuntimeError(
                    "backprop_ext.nn.convert: this model transforms its lm_head's output before "
                    "the loss, so the fused loss does not apply; convert(model, lm_loss=False)")
            request.consumed = True
            return request.loss
        return self.original(logits, labels, vocab_size, **kwargs)


def _labels_index(model) -> int | None:
    """Position of `labels` among forward's positional arguments (after self), if any."""
    try:
        params = list(inspect.signature(type(model).forward).parameters)[1:]
    except (TypeError, ValueError):
        return None
    return params.index("labels") if "labels" in params else None


class _PreHook:
    def __init__(self, head, labels_index, keep_logits) -> None:
        self.head, self.labels_index, self.keep_logits = head, labels_index, keep_logits

    def __call__(self, model, args, kwargs):
        if not (model.training and torch.is_grad_enabled()) or self.head._lm_request is not None:
            return None
        labels = kwargs.get("labels")
        if labels is None and self.labels_index is not None and len(args) > self.labels_index:
            labels = args[self.labels_index]
        if labels is None and kwargs.get("shift_labels") is None:
            return None
        self.head._lm_request = _Request(labels, kwargs.get("shift_labels"),
                                         kwargs.get("ignore_index", -100),
                                         kwargs.get("num_items_in_batch"), self.keep_logits)
        return None


class _PostHook:
    def __init__(self, head) -> None:
        self.head = head

    def __call__(self, model, args, kwargs, output):
        # read and cleared as attributes (the class default is None): Dynamo traces these on
        # every torch the package supports, not a pop from the Module's __dict__
        request = self.head._lm_request
        self.head._lm_request = None
        if request is None or request.loss is None:
            return None
        if not request.consumed:
            raise RuntimeError("backprop_ext.nn.convert: the model did not hand its lm_head's "
                               "output to its loss_function; convert(model, lm_loss=False)")
        return _without_placeholder(output, request)


def _without_placeholder(output, request):
    """The model's output with request.logits (None unless keep_logits) as its logits."""
    if isinstance(output, tuple):
        items = list(output)
        i = next(i for i, o in enumerate(items) if o is request.loss and i > 0)
        if request.logits is None:
            del items[i]
        else:
            items[i] = request.logits
        return type(output)(items)
    fields = {k: v for k, v in output.items() if k != "logits"}
    return type(output)(**fields, logits=request.logits)


def causal_lm_reason(model) -> str | None:
    """None when `model` has the structure patch() takes (an lm_head Linear of vocab_size
    outputs and transformers' ForCausalLMLoss as its loss_function), else why not (a
    reason for convert()'s report); "" when the model is no causal LM at all."""
    head = model._modules.get("lm_head") if isinstance(model, torch.nn.Module) else None
    if head is None:
        return ""
    loss_function = getattr(model, "loss_function", None)
    if loss_function is None:
        return ""
    if isinstance(loss_function, _FusedLoss):
        return "its loss is already fused"
    if (getattr(loss_function, "__module__", None),
            getattr(loss_function, "__name__", None)) != _CAUSAL_LM_LOSS:
        return "its loss_function is not transformers' ForCausalLMLoss"
    if type(head) not in (torch.nn.Linear, Linear) or getattr(head, "activation", None):
        return "its lm_head is not a plain Linear"
    from .convert import _has_hooks, _is_fsdp_unit

    if _is_fsdp_unit(head) or _is_fsdp_unit(model):
        return "FSDP2 unit (fully_shard gives it a class of its own): convert before sharding"
    if _has_hooks(model):
        return "the model has forward hooks"
    config = getattr(model, "config", None)
    if getattr(config, "vocab_size", head.out_features) != head.out_features:
        return "lm_head's out_features differ from config.vocab_size"
    if getattr(config, "final_logit_softcapping", None) is not None:
        return ("final_logit_softcapping (tanh(logits / c) * c between the head and the loss), "
                "which the fused loss does not compute")
    return None


def patch(model, keep_logits: bool = False) -> None:
    """Installs the fused loss on `model` (causal_lm_reason(model) must be None): lm_head
    re-badged to CausalLMHead, the two hooks, loss_function set on the instance."""
    head = model.lm_head
    original = model.loss_function
    head.__class__ = CausalLMHead
    model.loss_function = _FusedLoss(head, original)
    pre = model.register_forward_pre_hook(_PreHook(head, _labels_index(model), keep_logits),
                                          with_kwargs=True)
    post = model.register_forward_hook(_PostHook(head), with_kwargs=True, always_call=True)
    model._backprop_ext_lm_hooks = (pre, post)


def unpatch(model) -> None:
    """Undoes patch(): the hooks removed, the original loss_function and Linear class back."""
    for handle in model.__dict__.pop("_backprop_ext_lm_hooks", ()):
        handle.remove()
    fused = model.loss_function
    model.loss_function = fused.original
    fused.head.__class__ = Linear
    fused.head.__dict__.pop("_lm_request", None)


def probe(model) -> str | None:
    """Runs the patched model once on a tiny batch (eval mode, no autograd, the request left on
    the head by hand) and compares its loss with the model's own: None when they agree, else
    why not. Modes restored after."""
    head = model.lm_head
    param = head.weight
    if param.device.type == "meta":
        return "its parameters are on the meta device (no probe possible)"
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, head.out_features, (1, 6), generator=g).to(param.device)
    labels = ids.clone()
    labels[0, 2] = -100
    modes = {m: m.training for m in model.modules()}
    try:
        for m in modes:
            m.training = False
        with torch.no_grad():
            fused, model.loss_function = model.loss_function, model.loss_function.original
            try:
                expected = model(input_ids=ids, labels=labels).loss
            finally:
                model.loss_function = fused
            head._lm_request = _Request(labels, None, -100, None, False)
            got = model(input_ids=ids, labels=labels)
    except Exception as e:  # any failure means: leave the model alone
        return f"the probe forward failed ({type(e).__name__}: {str(e)[:80]})"
    finally:
        head.__dict__.pop("_lm_request", None)
        for m, training in modes.items():
            m.training = training
    if getattr(got, "logits", None) is not None or not torch.is_tensor(expected):
        return "the probe forward did not take the fused loss"
    tol = {torch.float16: 2e-2, torch.bfloat16: 5e-2}.get(param.dtype, 1e-4)
    if not torch.allclose(got.loss.float(), expected.float(), rtol=tol, atol=tol):
        return "the fused loss differs from the model's own on a probe batch"
    return None
