"""GLUE metrics as an `evaluate` module, one config per task, as the hub's `glue` metric
names them: accuracy everywhere, plus Matthews correlation for CoLA and F1 for MRPC/QQP;
Pearson and Spearman correlation for STS-B.

Values are as scikit-learn and scipy return them (fractions, MCC and correlations in
-1..1), so run records keep the numbers they had before evaluate was involved. The
library's edge cases are kept too: constant predictions give MCC 0, a constant series
gives a NaN correlation.

evaluate copies this file into its modules cache and imports it from there, so it
imports libraries only, never lorafa; lorafa.metrics.load_metric("glue", task) loads it.
"""

import datasets
import evaluate
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

# In the order the run records list them.
_METRICS = {
    "cola": ("accuracy", "mcc"),
    "sst2": ("accuracy",),
    "mrpc": ("accuracy", "f1"),
    "qqp": ("accuracy", "f1"),
    "stsb": ("pearson", "spearman"),
    "mnli": ("accuracy",),
    "qnli": ("accuracy",),
    "rte": ("accuracy",),
}

_DESCRIPTION = "GLUE dev-set metrics of the LoRA-FA paper's Table 2 (RoBERTa)."
_CITATION = """@inproceedings{wang2019glue,
  title={GLUE: A Multi-Task Benchmark and Analysis Platform for Natural Language Understanding},
  author={Wang, Alex and Singh, Amanpreet and Michael, Julian and Hill, Felix and Levy, Omer and Bowman, Samuel R.},
  booktitle={ICLR},
  year={2019}
}"""
_INPUTS = """
Args:
    predictions: class ids (int), or scores (float) for stsb.
    references: gold class ids, or gold scores for stsb.
Returns: {"accuracy"} (+ "mcc" for cola, "f1" for mrpc/qqp), or {"pearson", "spearman"} for stsb.
"""


class Glue(evaluate.Metric):
    def _info(self):
        if self.config_name not in _METRICS:
            raise ValueError(f"config_name: unknown GLUE task {self.config_name!r}; "
                             f"available: {', '.join(_METRICS)}")
        # float32 as the STS-B loader stores gold scores and the model emits logits. The
        # numpy format hands every float column over as float32 in any case, so scipy
        # computes in float32 as it did on the Trainer's arrays (float64 input is rounded).
        value = datasets.Value("float32" if self.config_name == "stsb" else "int64")
        return evaluate.MetricInfo(
            description=_DESCRIPTION, citation=_CITATION, inputs_description=_INPUTS,
            features=datasets.Features({"predictions": value, "references": value}),
            format="numpy",
            reference_urls=["https://gluebenchmark.com/"],
        )

    def _compute(self, predictions, references):
        metrics = _METRICS[self.config_name]
        if self.config_name == "stsb":
            return {"pearson": float(pearsonr(predictions, references)[0]),
                    "spearman": float(spearmanr(predictions, references)[0])}
        out = {"accuracy": float(accuracy_score(references, predictions))}
        if "mcc" in metrics:
            out["mcc"] = float(matthews_corrcoef(references, predictions))
        if "f1" in metrics:
            out["f1"] = float(f1_score(references, predictions))
        return out
