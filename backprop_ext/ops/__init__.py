"""The ops: one module per family, each reading top to bottom as fake kernels, autograd
Functions, public functions.

    activation.py            relu, gelu, silu, ... (from csrc/ops/activation_table.h)
    gated.py                 swiglu, geglu, gated
    linear.py                linear with bias and activation fused
    softmax.py               softmax, log_softmax, logsumexp
    cross_entropy.py         cross_entropy
    linear_cross_entropy.py  the fused output layer and loss
    multi_tensor.py          the fused multi-tensor kernels behind clipping

and what they share: entry.py (how Python calls a registered op, torch.ops.backprop_ext.*),
autograd.py (how each op gets its autograd and vmap rules from its family's Function), layout.py
(output strides, as the kernels choose them), dtypes.py (the dtypes the kernels take).
"""
