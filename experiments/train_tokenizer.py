"""Train the tiny models' byte-level BPE tokenizer on the local corpus (corpus.py).

    python experiments/train_tokenizer.py [--vocab-size 8192] [--out models/tiny-bpe]

Special tokens sit at RoBERTa's ids (<s>=0, <pad>=1, </s>=2, <unk>=3, <mask>=4), so the
RoBERTa-, T5- and LLaMA-shaped tiny models all use this one tokenizer.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tokenizers import ByteLevelBPETokenizer, processors
from transformers import PreTrainedTokenizerFast

from corpus import iter_corpus  # experiments/corpus.py, a sibling of this script

ROOT = Path(__file__).resolve().parent.parent
SPECIALS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]


def train(vocab_size: int, out: Path) -> PreTrainedTokenizerFast:
    bpe = ByteLevelBPETokenizer(add_prefix_space=False)
    bpe.train_from_iterator(iter_corpus(), vocab_size=vocab_size, min_frequency=2, special_tokens=SPECIALS,
                            show_progress=True)
    # RoBERTa-style pairs: <s> A </s></s> B </s>
    bpe.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0), trim_offsets=True)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                        unk_token="<unk>", mask_token="<mask>", cls_token="<s>", sep_token="</s>")
    out.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(out))
    return tokenizer


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vocab-size", type=int, default=8192)
    ap.add_argument("--out", type=Path, default=ROOT / "models" / "tiny-bpe")
    args = ap.parse_args(argv)
    tok = train(args.vocab_size, args.out)
    ids = tok("The movie was great.", "Filmul a fost grozav.")["input_ids"]
    print(f"vocabulary {len(tok)}; example: {tok.convert_ids_to_tokens(ids)}\nsaved to {args.out}")


if __name__ == "__main__":
    main()
