"""The PyTorch GPT-2 the benchmarks compare against (nanoGPT layout, written for yuanli's
benches): pre-LayerNorm blocks, fused QKV, `scaled_dot_product_attention(is_causal=True)`,
GELU-tanh MLP, LM head tied to the (padded) token embedding, loss over the real vocabulary,
GPT-2 initialisation. `adamw(model, ...)` puts weight decay on matrices only, as yuanli does.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def make_gpt(C, H, L, T, V):
    Vp = (V + 63) // 64 * 64

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln_1, self.ln_2 = nn.LayerNorm(C), nn.LayerNorm(C)
            self.c_attn, self.attn_proj = nn.Linear(C, 3 * C), nn.Linear(C, C)
            self.c_fc, self.mlp_proj = nn.Linear(C, 4 * C), nn.Linear(4 * C, C)

        def forward(self, x):
            b, t, c = x.shape
            q, k, v = self.c_attn(self.ln_1(x)).split(C, dim=2)
            q, k, v = (z.view(b, t, H, c // H).transpose(1, 2) for z in (q, k, v))
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + self.attn_proj(y.transpose(1, 2).contiguous().view(b, t, c))
            return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))

    class GPT(nn.Module):
        def __init__(self):
            super().__init__()
            self.wte, self.wpe = nn.Embedding(Vp, C), nn.Embedding(T, C)
            self.h = nn.ModuleList([Block() for _ in range(L)])
            self.ln_f = nn.LayerNorm(C)
            for n, p in self.named_parameters():
                if p.dim() >= 2:
                    nn.init.normal_(p, 0.0, 0.02 / math.sqrt(2 * L) if n.endswith("proj.weight") else 0.02)
                elif n.endswith("bias") and "ln" not in n:
                    nn.init.zeros_(p)

        def forward(self, idx, targets):
            x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1]))
            for blk in self.h:
                x = blk(x)
            logits = (self.ln_f(x) @ self.wte.weight.t())[..., :V]
            return F.cross_entropy(logits.reshape(-1, V), targets.reshape(-1))

    return GPT()


def adamw(model, lr, betas, weight_decay):
    def is_matrix(n, p):
        return p.dim() >= 2 and "wte" not in n and "wpe" not in n

    decay = [p for n, p in model.named_parameters() if is_matrix(n, p)]
    other = [p for n, p in model.named_parameters() if not is_matrix(n, p)]
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay}, {"params": other, "weight_decay": 0.0}], lr=lr, betas=betas, eps=1e-8)
