"""Independent Influence references for tests: plain torch over a Hugging Face LLaMA model's own activations.

They know nothing of attnlens or TransformerLens. Activations are captured with
forward hooks on the Hugging Face modules (the attention's normalised input, the
per-head outputs before ``o_proj``, the attention output) and the attention
weights with ``output_attentions=True`` (eager attention); then a loop over the
layers applies each convention's formula.
"""

from __future__ import annotations

import torch


def capture(hf_model, tokens):
    """Per layer: ``x`` (the residual stream entering), ``e`` (the attention's normalised input),
    ``a`` (the attention output), ``z`` (per-head outputs ``[seq, head, d_head]``), ``A`` (``[head, q, k]``)."""
    layers = hf_model.model.layers
    cfg = hf_model.config
    n_heads = cfg.num_attention_heads
    got: dict[int, dict[str, torch.Tensor]] = {i: {} for i in range(len(layers))}
    handles = []
    for i, layer in enumerate(layers):
        def pre(module, args, kwargs, i=i):
            hidden = args[0] if args else kwargs["hidden_states"]
            got[i]["x"] = hidden[0].detach()

        def norm(module, args, out, i=i):
            got[i]["e"] = out[0].detach()

        def o_in(module, args, i=i):
            z = args[0][0].detach()
            got[i]["z"] = z.reshape(z.shape[0], n_heads, -1)

        def attn(module, args, out, i=i):
            got[i]["a"] = out[0][0].detach()

        handles += [
            layer.register_forward_pre_hook(pre, with_kwargs=True),
            layer.input_layernorm.register_forward_hook(norm),
            layer.self_attn.o_proj.register_forward_pre_hook(o_in),
            layer.self_attn.register_forward_hook(attn),
        ]
    try:
        with torch.no_grad():
            out = hf_model(torch.as_tensor(tokens).reshape(1, -1), output_attentions=True)
    finally:
        for h in handles:
            h.remove()
    for i, att in enumerate(out.attentions):
        got[i]["A"] = att[0].detach()
    return [got[i] for i in range(len(layers))]


def influence_stated(acts, span, seq):
    """The stated formula: ``|x_l|_1`` of the residual stream entering layer ``l``."""
    current = torch.zeros(seq, dtype=torch.float64)
    current[span[0]:span[1]] = 1
    rows = [current]
    for act in acts:
        x = act["x"].double().abs().sum(-1)
        a = act["a"].double().abs().sum(-1)
        att = act["A"].double().mean(0) @ current
        current = (x * current + a * att) / (x + a)
        rows.append(current)
    return torch.stack(rows)


def influence_pap(acts, span, seq, *, heads=False):
    """pay-attention-pipeline 0.2.0's Influence (``heads=True``: its InfluenceHeads), in float32 as it runs.

    The residual term at layer ``l`` uses the L1 norm of layer ``l-1``'s normalised attention input
    (layer 0 uses its own). InfluenceHeads combines ``A_h @ I`` by the L2 norm of each head's output.
    """
    current = torch.zeros(seq, dtype=torch.float32)
    current[span[0]:span[1]] = 1
    rows = [current]
    previous_e = acts[0]["e"]
    for act in acts:
        e_norm = previous_e.abs().sum(-1)
        a_norm = act["a"].abs().sum(-1)
        if heads:
            per_head = act["A"] @ current  # [head, q]
            w = act["z"].norm(dim=-1).T  # [head, q]
            att = (w * per_head).sum(0) / w.sum(0)
        else:
            att = act["A"].mean(0) @ current
        current = (e_norm * current + a_norm * att) / (e_norm + a_norm)
        rows.append(current)
        previous_e = act["e"]
    return torch.stack(rows)
