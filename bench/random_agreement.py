"""Do the runner and transformers' model with moekit's MoE pick the same greedy tokens on a random
checkpoint made as bench/generate.py makes it? On the CPU, at a chosen depth and vocabulary (8
experts), in the dtypes given: each path's first 8 greedy tokens after a 100-token prompt, and the
margin between transformers' two largest logits at the prompt's end (docs/decode.md).

    python3 bench/random_agreement.py LAYERS VOCAB float32,bfloat16
"""

import sys
import tempfile
from pathlib import Path

import torch

import generate
from moekit.models import GptOssConfig, load_model
from moekit.transformers_gpt_oss import from_pretrained


def main():
    layers, vocab, dtypes = int(sys.argv[1]), int(sys.argv[2]), [getattr(torch, n) for n in sys.argv[3].split(",")]
    config = GptOssConfig(**{**generate.COMMON, "num_hidden_layers": layers, "num_experts": 8, "vocab_size": vocab})
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "original"
        generate.write_checkpoint(path, config, torch.device("cpu"))
        prompt = torch.randint(0, vocab, (100,), generator=torch.Generator().manual_seed(1)).tolist()
        for dtype in dtypes:
            with torch.inference_mode():
                runner = load_model(path, "cpu", progress=False, dtype=dtype)
                ours = runner.generate(prompt, 8, graph=False)
                del runner
                model = from_pretrained(path, "cpu", dtype=dtype)
                out = model.generate(torch.tensor([prompt]), max_new_tokens=8, min_new_tokens=8, do_sample=False,
                                     eos_token_id=None, pad_token_id=0, return_dict_in_generate=True,
                                     output_logits=True)
                theirs = out.sequences[0, len(prompt):].tolist()
                top = out.logits[0][0].float().topk(2).values  # the prefill's logits at the prompt's end
                del model
            print(f"{layers} layers, vocab {vocab}, {dtype}: runner {ours}, transformers {theirs}, "
                  f"top-2 margin {float(top[0] - top[1]):.4f}", flush=True)


if __name__ == "__main__":
    main()
