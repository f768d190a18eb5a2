"""Translation metrics of the LoRA-FA paper's Table 3 as an `evaluate` module: corpus
BLEU (sacrebleu) and mean sentence ROUGE-L F1 (rouge-score), both on 0..100.

BLEU is sacrebleu.corpus_bleu with its defaults (13a tokenisation, exp smoothing), the
number papers report. ROUGE-L is rouge-score without stemming, the default of the hub's
`rouge` metric; its tokenizer keeps only [a-z0-9], so Romanian diacritics split words,
kept for comparability with numbers computed the usual way. Both sides are stripped of
surrounding whitespace first, since decoded generations often carry a leading space.

One reference per prediction: the WMT16 En->Ro dev and test sets have one.

evaluate copies this file into its modules cache and imports it from there, so it
imports libraries only, never lorafa; lorafa.metrics.load_metric("translation") loads it.
"""

import datasets
import evaluate
import numpy as np
import sacrebleu
from rouge_score import rouge_scorer

_DESCRIPTION = "Corpus BLEU and ROUGE-L (x100) of translations against one reference each."
_CITATION = """@inproceedings{post-2018-call,
  title={A Call for Clarity in Reporting {BLEU} Scores},
  author={Post, Matt},
  booktitle={Proceedings of the Third Conference on Machine Translation},
  year={2018}
}
@inproceedings{lin-2004-rouge,
  title={{ROUGE}: A Package for Automatic Evaluation of Summaries},
  author={Lin, Chin-Yew},
  booktitle={Text Summarization Branches Out},
  year={2004}
}"""
_INPUTS = """
Args:
    predictions: translations (str).
    references: one reference translation (str) per prediction.
Returns: {"bleu": 0..100, "rougeL": 0..100}.
"""


class Translation(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION, citation=_CITATION, inputs_description=_INPUTS,
            features=datasets.Features({"predictions": datasets.Value("string"),
                                        "references": datasets.Value("string")}),
            reference_urls=["https://github.com/mjpost/sacrebleu",
                            "https://github.com/google-research/google-research/tree/master/rouge"],
        )

    def _compute(self, predictions, references):
        preds = [p.strip() for p in predictions]
        refs = [r.strip() for r in references]
        bleu = sacrebleu.corpus_bleu(preds, [refs]).score
        scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
        rouge = [scorer.score(r, p)["rougeL"].fmeasure for p, r in zip(preds, refs)]
        return {"bleu": float(bleu), "rougeL": float(100.0 * np.mean(rouge))}
