"""Classic gptq / awq checkpoints of smollm2-135m (RTN 4-bit g64) reloaded through optimum + gptqmodel
(PYTHONPATH=DIR where gptqmodel was installed with --target): logits and weights vs our fake-quant model.
Run: PYTHONPATH=/tmp/gptqm python bench/classic_reload_bench.py -> bench/results/classic_reload_smollm2.json"""
import sys, time, json, torch; sys.path.insert(0, str(__import__('pathlib').Path(__file__).resolve().parents[1]))
from pathlib import Path
from llm_quantizer.model import open_source
from llm_quantizer.quant.rtn import QuantArgs
from llm_quantizer.quant_runner import quantize_int, resolve_schemes
from llm_quantizer.engine.skeleton import load_full_model
from transformers import AutoModelForCausalLM
src = open_source('smollm2-135m')
out = {}
for fmt in ('gptq', 'awq'):
    t = time.time()
    res = quantize_int(src, 'rtn', resolve_schemes(src, None, QuantArgs(4, 64, True)), None, Path(__import__('tempfile').mkdtemp()) / fmt, device='cpu', progress=False, keep_fake=True, checkpoint_format=fmt)
    ids = torch.tensor(src.tokenizer()("The capital of France is Paris. The quick brown fox jumps over the lazy dog. " * 4)["input_ids"])[None]
    m = AutoModelForCausalLM.from_pretrained(res.path, dtype=torch.bfloat16, device_map='cpu').eval()
    ref = load_full_model(src, 'cpu', torch.bfloat16); ref.load_state_dict(res.fake_state, strict=False); ref.eval()
    with torch.no_grad():
        a, b = m(ids).logits.float(), ref(ids).logits.float()
        wd = 0.0
        for name in list(res.schemes)[:14]:
            fw = res.fake_state[name + '.weight']
            wd = max(wd, (m.get_submodule(name)(torch.eye(fw.shape[1], dtype=torch.bfloat16)).t().float() - fw.float()).abs().max().item())
    out[fmt] = {'max_abs_logit_diff': (a - b).abs().max().item(), 'max_abs_logit': b.abs().max().item(), 'max_abs_weight_diff_first_14_linears': wd, 'tokens': ids.numel(), 'seconds': round(time.time() - t, 1), 'same_top1_pct': (a.argmax(-1) == b.argmax(-1)).float().mean().item() * 100}
    print(fmt, out[fmt], flush=True)
import os; out['loadavg'] = os.getloadavg(); out['note'] = 'RTN 4-bit g64 sym on smollm2-135m; CPU; bf16; weights compared through each linear on an identity input'
json.dump(out, open(Path(__file__).resolve().parent / 'results' / 'classic_reload_smollm2.json', 'w'), indent=1)
