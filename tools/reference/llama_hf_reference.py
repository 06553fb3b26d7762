"""Tiny random LLaMA-family models in Hugging Face layout, for the safetensors loader tests
(crates/models/tests/hf_llama.rs).

Writes under crates/models/testdata/tiny_hf/:
- llama/          LlamaForCausalLM, GQA (4 query heads, 2 kv heads), untied head, one
                  model.safetensors;
- llama_sharded/  the same weights split into several shards with model.safetensors.index.json;
- qwen2/          Qwen2ForCausalLM (q/k/v biases, tied embeddings);
each with a byte-level BPE tokenizer.json (trained here with `tokenizers` on Shakespeare,
vocabulary 300), a tokenizer_config.json with a ChatML template, and reference.json holding the
float64 logits of transformers for a fixed token sequence and the tokenizer's ids for a text.

Run: bench/.venv/bin/python tools/reference/llama_hf_reference.py   (torch, transformers, tokenizers)
"""
import json, os
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, decoders, trainers
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
out = os.path.join(root, "crates", "models", "testdata", "tiny_hf")
torch.manual_seed(0)
torch.set_num_threads(2)

text = open(os.path.join(root, "data", "shakespeare", "tempest_gut.txt"), encoding="utf-8").read()[:200_000]
tok = Tokenizer(models.BPE())
tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
tok.decoder = decoders.ByteLevel()
trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|im_start|>", "<|im_end|>"],
                              initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
tok.train_from_iterator([text], trainer)
vocab = tok.get_vocab_size()
chat_template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
sample_text = "Full fathom five thy father lies; 1234 <|im_end|>"
ids_in = [5, 17, 42, 100, 7, 250, 3, 3, 64, 128, 199, 11]

def save(model, name, shard=None):
    d = os.path.join(out, name)
    os.makedirs(d, exist_ok=True)
    for f in os.listdir(d):
        os.remove(os.path.join(d, f))
    model.save_pretrained(d, safe_serialization=True, **({"max_shard_size": shard} if shard else {}))
    tok.save(os.path.join(d, "tokenizer.json"))
    json.dump({"bos_token": None, "eos_token": "<|im_end|>", "add_bos_token": False,
               "chat_template": chat_template}, open(os.path.join(d, "tokenizer_config.json"), "w"), indent=1)
    m64 = model.double().eval()
    with torch.no_grad():
        logits = m64(torch.tensor([ids_in])).logits[0]
    model.float()
    ref = {"input_ids": ids_in, "logits": logits.tolist(),
           "text": sample_text, "text_ids": tok.encode(sample_text).ids,
           "generated_by": "tools/reference/llama_hf_reference.py (transformers, float64)"}
    json.dump(ref, open(os.path.join(d, "reference.json"), "w"))
    if os.path.exists(os.path.join(d, "generation_config.json")):
        os.remove(os.path.join(d, "generation_config.json"))
    print(name, sorted(os.listdir(d)))

common = dict(vocab_size=vocab, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-6, rope_theta=10000.0)
llama = LlamaForCausalLM(LlamaConfig(tie_word_embeddings=False, **common)).float()
# random init has tiny weights; make the test sensitive by scaling norms away from 1
with torch.no_grad():
    for n, p in llama.named_parameters():
        if "norm" in n:
            p.uniform_(0.5, 1.5)
save(llama, "llama")
save(llama, "llama_sharded", shard="20KB")
qwen = Qwen2ForCausalLM(Qwen2Config(tie_word_embeddings=True, **common)).float()
with torch.no_grad():
    for n, p in qwen.named_parameters():
        if "norm" in n:
            p.uniform_(0.5, 1.5)
        if n.endswith(".bias"):
            p.normal_(0, 0.5)
save(qwen, "qwen2")
