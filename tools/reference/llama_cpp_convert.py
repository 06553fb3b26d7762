"""Runs llama.cpp's own converter (convert_hf_to_gguf.py) on a tiny Hugging Face LLaMA
directory, with a placeholder vocabulary: for checks of what the converter writes about the
model itself (RoPE metadata, the rope_freqs tensor), not of the tokenizer — tiny test
tokenizers have no pre-tokenizer hash the converter knows.

The converter comes from the llama-cpp-python source distribution on PyPI, which vendors
llama.cpp (0.3.36 tested):
  curl -sO <url of llama_cpp_python-0.3.36.tar.gz from https://pypi.org/simple/llama-cpp-python/>
  tar xzf llama_cpp_python-0.3.36.tar.gz
  LLAMA_CPP_DIR=llama_cpp_python-0.3.36/vendor/llama.cpp \
    bench/.venv-hf/bin/python tools/reference/llama_cpp_convert.py MODEL_DIR --outtype f32 --outfile OUT.gguf
"""
import os, runpy, sys

L = os.environ["LLAMA_CPP_DIR"]
sys.path.insert(0, L)
sys.path.insert(1, os.path.join(L, "gguf-py"))
import conversion.llama as llama  # noqa: E402  (the converter's own package)


def placeholder_vocab(self):
    n = self.hparams["vocab_size"]
    self.gguf_writer.add_tokenizer_model("gpt2")
    self.gguf_writer.add_tokenizer_pre("default")
    self.gguf_writer.add_token_list([f"<t{i}>" for i in range(n)])
    self.gguf_writer.add_token_types([1] * n)


llama.LlamaModel.set_vocab = placeholder_vocab
sys.argv = ["convert_hf_to_gguf.py"] + sys.argv[1:]
runpy.run_path(os.path.join(L, "convert_hf_to_gguf.py"), run_name="__main__")
