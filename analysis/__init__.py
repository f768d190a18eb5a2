"""Analysis: run records -> the paper's tables and figures, with the paper's values beside ours.

    python -m analysis.tables  --scale mini [--only table2]   # results/mini/tables/table{2..7}.{csv,md}
    python -m analysis.figures --scale mini [--only fig3]     # results/mini/figures/fig*.png

Both read results/<scale>/runs.jsonl (see lorafa.results; $LORAFA_RESULTS_DIR moves
results/), rebuild whatever the records allow and print what is missing.

Modules: paper_values (the paper's numbers, transcribed), names (model labels and stand-ins
from conf/, task labels and metrics from lorafa.tasks.registry), common (record selection,
best setting, formatting), cells (table cells beside the paper's), tables (Tables 2-7),
table5 (Table 5, also for experiments/memory.py --report), memory_tables (the other memory
report tables), figure_data (each figure's plotted values as a frame), figures (drawing),
synthetic (made-up records for tests).

Conventions that run records must follow (the analysis depends on these only)
-----------------------------------------------------------------------------
method      full_ft, lora, lora_fa, lora_qv, prompt_tuning, lora_fa_corrected
model       roberta-base, roberta-large, t5-small, t5-base, t5-large, llama-7b, llama2-7b;
            at mini scale tiny-roberta, tiny-t5, tiny-llama, which are compared with the
            paper's RoBERTa-base, T5-small and LLaMA-7B rows (the tables say so): labels
            from conf/model/<name>.yaml, stand-ins from conf/scale/*.yaml's stands_in_for.
task        glue/{cola,sst2,mrpc,qqp,stsb,mnli,qnli,rte}, wmt16_en_ro, alpaca, flanv2, mmlu
metrics     accuracy, f1, mcc (CoLA), pearson (STS-B), bleu, rougeL, mmlu_accuracy.
            accuracy/mcc/pearson/mmlu_accuracy are fractions in [0, 1] and printed x100;
            bleu and rougeL are stored on 0-100. MNLI runs store accuracy_matched and
            accuracy_mismatched; Table 2 averages the two per run.
experiment  the sweep a record belongs to; each table/figure reads only its own:
  table2    GLUE, RoBERTa x {full_ft, prompt_tuning, lora, lora_fa}, lr x seed sweep.
  table3    wmt16_en_ro, T5 x {full_ft, lora, lora_fa}; best setting chosen by BLEU.
  table4    task alpaca|flanv2 (the fine-tuning data), metric mmlu_accuracy; the base model
            is a record with task "mmlu" (any method name, e.g. "base"): gains are over it.
  table5    peak_memory_bytes per model x method (status "oom" for an out-of-memory cell).
  table6    RoBERTa-base on glue/mrpc, lora_fa, init_a in kaiming_uniform|all_one|std_normal, lr sweep.
  table7    as table6 with alpha varied (r=8).
  fig2a     memory runs, method lora|lora_fa, options describe the optimisation:
            attn_implementation (flash_attention_2, sdpa), quantization (nf4, int8),
            zero_shards (N > 1 means ZeRO-3 over N GPUs), gradient_checkpointing (bool);
            none of them = the baseline; x axis = batch_size.
  fig2b     memory runs with options.num_adapted_layers; x axis = that number.
  fig2c     memory runs with rank r varied.
  fig3      memory runs with memory_breakdown {weights, gradients, optimizer_states,
            activations, other} in bytes.
  fig4      training runs with eval_history [{step, epoch, <metric>: value}, ...]
            (a nested {"metrics": {...}} and HF's "eval_" prefixes are also accepted),
            tasks glue/cola and glue/sst2.
  fig5      memory and speed runs (peak_memory_bytes, step_time_s, tokens_per_s) over
            batch_size; options.attn_implementation marks the FlashAttention series.
  fig6      glue/mrpc accuracy for lora and lora_fa over a rank x lr grid.
status      ok | diverged | oom | failed. A missing cell is explained by the runs it has:
            "not run" (no record), "oom", "diverged", or the first line of a failed run's
            error (runners write error="data unavailable offline" when data is missing).

Selection (as the paper does): within each table cell, runs are grouped by their
setting (r, alpha, lr, init_a); a setting counts only if none of its runs diverged or
ran out of memory; the best setting is the one with the highest mean over seeds; we
report that mean and the sample std (ddof=1; blank for one seed). Memory is in GB of
2**30 bytes.
"""
