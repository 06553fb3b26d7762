"""Reference vectors for yuanli's GPT-2 against Hugging Face transformers (PyTorch, float32).

Builds a tiny GPT-2 (2 layers, 4 heads, 32 wide, vocab 61, context 16) with a fixed seed,
saves it in the Hugging Face layout (model.safetensors + config.json), runs one batch and
writes the logits, the loss and every parameter gradient (HF names) to reference.safetensors.
crates/models/tests/hf_reference.rs imports the checkpoint and checks our forward and backward
against these, with no Python needed at test time.

    bench/.venv/bin/python tools/reference/gpt2_hf_reference.py [OUT_DIR]
"""
import sys
import torch
from safetensors.torch import save_file
from transformers import GPT2Config, GPT2LMHeadModel

out = sys.argv[1] if len(sys.argv) > 1 else "crates/models/testdata/gpt2_tiny"
torch.manual_seed(0)
cfg = GPT2Config(vocab_size=61, n_positions=16, n_embd=32, n_layer=2, n_head=4, activation_function="gelu_new",
                 resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, layer_norm_epsilon=1e-5, tie_word_embeddings=True)
model = GPT2LMHeadModel(cfg).float()
# Non-trivial LayerNorm parameters and biases, so that mapping mistakes cannot hide.
with torch.no_grad():
    for name, p in model.named_parameters():
        if "ln" in name or name.endswith("bias"):
            p.add_(0.1 * torch.randn_like(p))
model.save_pretrained(out, safe_serialization=True)
idx = torch.randint(0, 61, (2, 12), generator=torch.Generator().manual_seed(1))
targets = torch.randint(0, 61, (2, 12), generator=torch.Generator().manual_seed(2))
model.train()  # dropout is 0; train mode only so that gradients flow as in training
logits = model(idx).logits
loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 61), targets.reshape(-1))
loss.backward()
ref = {"idx": idx.to(torch.int32), "targets": targets.to(torch.int32), "logits": logits.detach().contiguous(), "loss": loss.detach().reshape(1)}
for name, p in model.named_parameters():
    ref["grad." + name] = p.grad.detach().contiguous()
save_file(ref, f"{out}/reference.safetensors")
print(f"wrote {out}: loss {loss.item():.6f}, {len(ref) - 4} gradients")
