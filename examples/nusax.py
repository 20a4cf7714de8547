"""NusaX-Senti loader: the CSV folders of the IndoNLP/nusax repository (datasets/sentiment/<language>/)."""
import csv
import os

LABELS = ("negative", "neutral", "positive")


def load_split(data_dir, split, language="indonesian"):
    """Return (texts, label ids) of one split (train, valid or test) of one language."""
    path = os.path.join(data_dir, "nusax-sentiment", language, f"{split}.csv")
    if not os.path.isfile(path):
        path = os.path.join(data_dir, language, f"{split}.csv")  # data_dir may be nusax-sentiment itself
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no NusaX-Senti {language}/{split}.csv under {data_dir}; "
                                "pass --data-dir pointing at the folder that holds nusax-sentiment/")
    texts, labels = [], []
    with open(path, encoding="utf-8", newline="") as fh:
        for row in csv.DictReader(fh):
            texts.append(row["text"])
            labels.append(LABELS.index(row["label"]))
    return texts, labels
