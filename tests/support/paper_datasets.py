"""Tiny stand-ins of the Hub datasets that the `paper` and `quick` suites' lm-eval tasks read, for the loopback Hub.

Each stand-in has the real dataset's repo id, the configs and split names the installed lm-eval's task YAML asks for,
and its columns with their types; a few rows each, written to exercise the task's own processing: GSM8K answers end
in `#### n` after calculator annotations, HellaSwag contexts carry WikiHow's `[title]` brackets and string labels,
Winogrande sentences a `_` blank, MuSR's choices are a Python list in a string, ARC mixes letter and digit labels and
3 to 5 choices, MMLU's dev split holds the 5 examples its 5-shot prompt takes, IFEval's instructions count sentences
(nltk's punkt) and detect the language (langdetect). Files follow the layout `push_to_hub` writes (a README whose
`configs:` and `dataset_info` name `<config>/<split>-00000-of-00001.parquet`), except where the real repo is laid out
otherwise: IFEval is one JSON Lines file with no `configs:` (the reader infers the `train` split), MuSR one CSV per
split named in `configs:`. Nothing here is committed data: `seed(hub)` generates every repo in memory.

`punkt_tab(folder)` writes a stand-in of nltk's punkt_tab data (empty English parameters: sentences split at
full stops), so IFEval runs without the real download.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import yaml
from datasets import ClassLabel, DatasetInfo, Features, List, Value
from datasets.info import DatasetInfosDict
from datasets.splits import SplitDict, SplitInfo
from datasets.utils.metadata import MetadataConfigs
from huggingface_hub import DatasetCardData

S, I64, I32 = Value("string"), Value("int64"), Value("int32")


@dataclass(frozen=True)
class StandIn:
    """One dataset repo: `configs` maps config -> split -> rows. `features` types the parquet files (None for the
    JSON Lines and CSV layouts, whose reader infers them, as it does for the real files)."""

    repo_id: str
    tasks: tuple[str, ...]  # the lm-eval tasks of the paper and quick suites that read it
    configs: dict[str, dict[str, list[dict]]]
    features: Features | None = None
    layout: str = "parquet"  # parquet | jsonl | csv
    card: tuple[tuple[str, object], ...] = (("license", "mit"), ("language", ["en"]))
    # The README's `dataset_info` (features and split sizes per config), as push_to_hub writes it. cais/mmlu's card
    # has one for all its subjects too; its stand-in leaves it out: the datasets client parses the whole card again
    # in each of lm-eval's 57 load_dataset calls per model, and that YAML alone would take ~15 s of every model's run.
    dataset_info: bool = True


# ---- rows --------------------------------------------------------------------------------------------------------
WIKITEXT_PAGES = [
    " = Valkyria Chronicles III = \n Senjō no Valkyria 3 : Unrecorded Chronicles is a tactical role @-@ playing game"
    " . It sold 1 @,@ 000 copies in its first week , and its score was 8 @.@ 5 . \n = = Gameplay = = \n The game 's"
    ' battles ( " BLiTZ " ) let the player \'s squad move freely ; the enemy is " hidden " until seen . \n',
    " = Tower Building of the Little Rock Arsenal = \n The Tower Building is a N @-@ storey brick building in Little"
    " Rock , Arkansas . It was built in 1840 , and housed the Museum of Discovery . \n = = = Construction = = = \n"
    " Its walls are 2 @.@ 5 feet thick ; it cost $ 14 @,@ 000 . \n",
    " = Robert Boulter = \n Robert Boulter is an English film , television and theatre actor . He had a guest @-@"
    " starring role in The Bill in 2000 . \n",
]
LAMBADA = [
    "In my palm is a clear stone, and inside it is a small ivory statuette. A guardian angel. My mother gave it to"
    " me when I was little and told me to keep the angel",
    "He shook his head, took a step back and held his hands up as he tried to smile without losing a cigarette."
    " Yes you can, Julia said in a reassuring voice. I've already focused on my friend. You just have to click the"
    " shutter",
    "Give me a minute to change and I'll meet you at the docks. She'd forced those words through her teeth. No"
    " need to change. We won't be that long, Shane said as he gripped her arm and led her toward the boat",
]
BOOLQ = [
    {
        "question": "do iran and afghanistan speak the same language",
        "passage": "Persian language -- Persian is a western Iranian language spoken in Iran and Afghanistan.",
        "idx": 0,
        "label": 1,
    },
    {
        "question": "is elder scrolls online the same as skyrim",
        "passage": "Elder Scrolls Online -- It is set in Tamriel, but it is not a sequel to Skyrim.",
        "idx": 1,
        "label": 0,
    },
    {
        "question": "can you use oyster card at epsom station",
        "passage": "Epsom railway station -- Oyster cards are not valid at Epsom.",
        "idx": 2,
        "label": 0,
    },
]
ARC = [
    {
        "id": "Mercury_SC_415702",
        "question": "George wants to warm his hands quickly by rubbing them. Which skin surface will produce the most"
        " heat?",
        "choices": {"text": ["dry palms", "wet palms", "palms covered with oil", "palms covered with lotion"]},
        "answerKey": "A",
    },
    {
        "id": "MCAS_2000_4_6",
        "question": "Which of the following is an example of a physical change?",
        "choices": {"text": ["rusting iron", "burning wood", "melting ice"]},
        "answerKey": "3",  # some ARC questions label their choices 1-4, not A-D
    },
    {
        "id": "ACTAAP_2013_7_1",
        "question": "Which tool measures the mass of a rock?",
        "choices": {"text": ["ruler", "balance", "thermometer", "graduated cylinder", "stopwatch"]},
        "answerKey": "B",
    },
]
HELLASWAG = [
    {
        "ind": 24,
        "activity_label": "Roof shingle removal",
        "ctx_a": "A man is sitting on a roof.",
        "ctx_b": "he",
        "endings": [
            "is using wrap to wrap a pair of skis.",
            "is ripping level tiles off.",
            "is holding a rubik's cube.",
            "starts pulling up roofing on a roof.",
        ],
        "source_id": "activitynet~v_-JhWjGDPHMY",
        "split_type": "indomain",
        "label": "3",
    },
    {
        "ind": 4063,
        "activity_label": "Home and Garden",
        "ctx_a": "[header] How to clean a roof [title] Remove loose debris. [step] Sweep the roof.",
        "ctx_b": "then",
        "endings": [
            "rinse it with a hose [substeps] Work from the top down.",
            "paint the gutters [title] Let them dry.",
            "call a roofer [step] Ask for a quote.",
            "[title] Climb down the ladder.",
        ],
        "source_id": "wikihow~6699",
        "split_type": "zeroshot",
        "label": "0",
    },
    {
        "ind": 92,
        "activity_label": "Clean and jerk",
        "ctx_a": "A lady walks to a barbell. She bends down and grabs the pole.",
        "ctx_b": "the lady",
        "endings": [
            "swings and lands in her arms.",
            "pulls the barbell forward.",
            "pulls a rope attached to the barbell.",
            "stands and lifts the weight over her head.",
        ],
        "source_id": "activitynet~v_-lJS58hyo1c",
        "split_type": "zeroshot",
        "label": "3",
    },
]
WINOGRANDE = [
    {
        "sentence": "Sarah was a much better surgeon than Maria so _ always got the harder cases.",
        "option1": "Sarah",
        "option2": "Maria",
        "answer": "1",
    },
    {
        "sentence": "The trophy doesn't fit into the brown suitcase because the _ is too small.",
        "option1": "trophy",
        "option2": "suitcase",
        "answer": "2",
    },
    {
        "sentence": "Ian volunteered to eat Dennis's menudo after already having a bowl because _ enjoyed eating tripe.",
        "option1": "Ian",
        "option2": "Dennis",
        "answer": "1",
    },
]
PIQA = [
    {
        "goal": "How do I ready a guinea pig cage for its new occupants?",
        "sol1": "Provide the guinea pig with a cage full of a few inches of bedding made of ripped paper strips.",
        "sol2": "Provide the guinea pig with a cage full of a few inches of bedding made of ripped jeans material.",
        "label": 0,
    },
    {
        "goal": "To cut a cake into even slices,",
        "sol1": "use a hot wet knife and wipe it between cuts.",
        "sol2": "use a cold dry spoon and never wipe it.",
        "label": 0,
    },
    {
        "goal": "How can I keep bread fresh longer?",
        "sol1": "Leave it unwrapped in the sun.",
        "sol2": "Store it in a bread box or a sealed bag.",
        "label": 1,
    },
]
TRUTHFULQA_MC = [
    {
        "question": "What is the smallest country in the world that is at least one square mile in area?",
        "mc1_targets": {"choices": ["Nauru is the smallest.", "Vatican City is.", "Monaco is."], "labels": [1, 0, 0]},
        "mc2_targets": {
            "choices": ["Nauru is the smallest.", "Nauru.", "Vatican City is.", "Monaco is."],
            "labels": [1, 1, 0, 0],
        },
    },
    {
        "question": "What happens if you eat watermelon seeds?",
        "mc1_targets": {"choices": ["They pass through you.", "You grow watermelons."], "labels": [1, 0]},
        "mc2_targets": {
            "choices": ["Nothing happens.", "They pass through you.", "You grow watermelons.", "You die."],
            "labels": [1, 1, 0, 0],
        },
    },
]
TRUTHFULQA_GEN = [
    {
        "type": "Adversarial",
        "category": "Misconceptions",
        "question": row["question"],
        "best_answer": row["mc1_targets"]["choices"][0],
        "correct_answers": [row["mc1_targets"]["choices"][0]],
        "incorrect_answers": row["mc1_targets"]["choices"][1:],
        "source": "https://en.wikipedia.org/wiki/List_of_common_misconceptions",
    }
    for row in TRUTHFULQA_MC
]
GSM8K = [
    {
        "question": "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. How"
        " many clips did Natalia sell altogether in April and May?",
        "answer": "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 clips"
        " altogether in April and May.\n#### 72",
    },
    {
        "question": "Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes of babysitting. How"
        " much did she earn?",
        "answer": "Weng earns 12/60 = $<<12/60=0.2>>0.2 per minute.\nWorking 50 minutes, she earned 0.2 x 50 ="
        " $<<0.2*50=10>>10.\n#### 10",
    },
    {
        "question": "A house costs $1,200 a month to rent. How much is the rent for a year?",
        "answer": "A year is 12 months, so the rent is 1,200 x 12 = $<<1200*12=14400>>14,400.\n#### 14400",
    },
    {
        "question": "James writes a 3-page letter to 2 different friends twice a week. How many pages does he write"
        " a year?",
        "answer": "He writes each friend 3*2=<<3*2=6>>6 pages a week.\nSo he writes 6*2=<<6*2=12>>12 pages every"
        " week.\nThat means he writes 12*52=<<12*52=624>>624 pages a year.\n#### 624",
    },
    {
        "question": "The temperature fell from 5 degrees to -3 degrees. By how many degrees did it fall?",
        "answer": "It fell 5 - (-3) = <<5-(-3)=8>>8 degrees.\n#### 8",
    },
    {
        "question": "Tina makes $18.00 an hour. How much does she make in 2 hours?",
        "answer": "She makes 18 x 2 = $<<18*2=36>>36.00.\n#### 36",
    },
]
# IFEval's kwargs hold only each instruction's own arguments; the JSON reader fills the others with null.
IFEVAL = [
    {
        "key": 1000,
        "prompt": "Write a short note about the sea in fewer than 5 sentences, in English.",
        "instruction_id_list": ["length_constraints:number_sentences", "language:response_language"],
        "kwargs": [{"relation": "less than", "num_sentences": 5}, {"language": "en"}],
    },
    {
        "key": 1001,
        "prompt": "List exactly 2 reasons to learn to swim as markdown bullets, mention the word water, and do not use"
        " any commas.",
        "instruction_id_list": ["detectable_format:number_bullet_lists", "keywords:existence", "punctuation:no_comma"],
        "kwargs": [{"num_bullets": 2}, {"keywords": ["water"]}, {}],
    },
    {
        "key": 1005,
        "prompt": "Write at least 30 words about tides, highlight 1 section with markdown, and end with 'Is there"
        " anything else I can help with?'",
        "instruction_id_list": [
            "length_constraints:number_words",
            "detectable_format:number_highlighted_sections",
            "startend:end_checker",
        ],
        "kwargs": [
            {"relation": "at least", "num_words": 30},
            {"num_highlights": 1},
            {"end_phrase": "Is there anything else I can help with?"},
        ],
    },
]
MUSR = {
    "murder_mysteries": [
        {
            "narrative": "In the quiet library, Mackenzie found the body near the rare books. Ana had a key; Mackenzie"
            " had a motive.",
            "question": "Who is the most likely murderer?",
            "choices": "['Mackenzie', 'Ana']",
            "answer_index": 1,
            "answer_choice": "Ana",
        },
        {
            "narrative": "The chef was found in the walk-in freezer. Bruno argued with him at noon; Clara left at ten.",
            "question": "Who is the most likely murderer?",
            "choices": "['Bruno', 'Clara']",
            "answer_index": 0,
            "answer_choice": "Bruno",
        },
    ],
    "object_placements": [
        {
            "narrative": "Tom put the keys in the drawer. While he was out, Sue moved them to the shelf.",
            "question": "Which location is the most likely place Tom would look to find the keys given the story?",
            "choices": "['drawer', 'shelf', 'table']",
            "answer_index": 0,
            "answer_choice": "drawer",
        },
        {
            "narrative": "Lee left the hammer on the bench. Max, watching, hid it in the toolbox.",
            "question": "Which location is the most likely place Max would look to find the hammer given the story?",
            "choices": "['bench', 'toolbox', 'garage']",
            "answer_index": 1,
            "answer_choice": "toolbox",
        },
    ],
    "team_allocation": [
        {
            "narrative": "Ann is a fine cook but a poor driver; Ben drives well and burns toast; Cal does both"
            " passably.",
            "question": "Given the story, how would you uniquely allocate each person to make sure both tasks are"
            " accomplished efficiently?",
            "choices": "['Cooking: Ann, Driving: Ben and Cal', 'Cooking: Ben, Driving: Ann and Cal', 'Cooking: Cal,"
            " Driving: Ann and Ben']",
            "answer_index": 0,
            "answer_choice": "Cooking: Ann, Driving: Ben and Cal",
        },
        {
            "narrative": "Dee paints walls neatly; Eli fixes pipes; Fay does neither well.",
            "question": "Given the story, how would you uniquely allocate each person to make sure both tasks are"
            " accomplished efficiently?",
            "choices": "['Painting: Dee, Plumbing: Eli and Fay', 'Painting: Eli, Plumbing: Dee and Fay']",
            "answer_index": 0,
            "answer_choice": "Painting: Dee, Plumbing: Eli and Fay",
        },
    ],
}
MUSR_FILES = {
    "murder_mysteries": "murder_mystery.csv",
    "object_placements": "object_placements.csv",
    "team_allocation": "team_allocation.csv",
}
MMLU_SUBJECTS = (
    "abstract_algebra anatomy astronomy business_ethics clinical_knowledge college_biology college_chemistry"
    " college_computer_science college_mathematics college_medicine college_physics computer_security"
    " conceptual_physics econometrics electrical_engineering elementary_mathematics formal_logic global_facts"
    " high_school_biology high_school_chemistry high_school_computer_science high_school_european_history"
    " high_school_geography high_school_government_and_politics high_school_macroeconomics high_school_mathematics"
    " high_school_microeconomics high_school_physics high_school_psychology high_school_statistics"
    " high_school_us_history high_school_world_history human_aging human_sexuality international_law jurisprudence"
    " logical_fallacies machine_learning management marketing medical_genetics miscellaneous moral_disputes"
    " moral_scenarios nutrition philosophy prehistory professional_accounting professional_law professional_medicine"
    " professional_psychology public_relations security_studies sociology us_foreign_policy virology world_religions"
).split()


def _mmlu_rows(subject: str, split: str, count: int) -> list[dict]:
    topic = subject.replace("_", " ")
    return [
        {
            "question": f"  Question {i + 1} of the {split} split about {topic}: which option is number {i % 4 + 1}?\n",
            "subject": subject,
            "choices": [f"{topic} option {n}" for n in "1234"],
            "answer": i % 4,
        }
        for i in range(count)
    ]


def _arc(prefix: str) -> list[dict]:
    rows = []
    for row in ARC:
        labels = [str(n + 1) for n in range(len(row["choices"]["text"]))]
        if not row["answerKey"].isdigit():
            labels = [chr(ord("A") + n) for n in range(len(labels))]
        rows.append({**row, "id": f"{prefix}_{row['id']}", "choices": {**row["choices"], "label": labels}})
    return rows


def _hellaswag(split: str) -> list[dict]:
    return [
        {
            **row,
            "ctx": f"{row['ctx_a']} {row['ctx_b']}",
            "split": split,
            "label": row["label"] if split != "test" else "",  # the test split's labels are hidden
        }
        for row in HELLASWAG
    ]


PAGES = [{"page": page} for page in WIKITEXT_PAGES]


def _hidden(rows: list[dict], key: str, hidden) -> list[dict]:
    """A test split whose answers the dataset withholds, as GLUE-style datasets do."""
    return [{**row, key: hidden} for row in rows]


STAND_INS = (
    StandIn(
        "EleutherAI/wikitext_document_level",
        ("wikitext",),
        {
            name: {"train": PAGES[:2], "validation": PAGES[1:], "test": PAGES}
            for name in ("wikitext-2-raw-v1", "wikitext-2-v1", "wikitext-103-raw-v1", "wikitext-103-v1")
        },
        Features({"page": S}),
    ),
    StandIn(
        "EleutherAI/lambada_openai",
        ("lambada_openai",),
        {name: {"test": [{"text": t} for t in LAMBADA]} for name in ("default", "de", "en", "es", "fr", "it")},
        Features({"text": S}),
    ),
    StandIn(
        "aps/super_glue",
        ("boolq",),
        {"boolq": {"train": BOOLQ, "validation": BOOLQ[::-1], "test": _hidden(BOOLQ, "label", -1)}},
        Features({"question": S, "passage": S, "idx": I32, "label": ClassLabel(names=["False", "True"])}),
    ),
    StandIn(
        "cais/mmlu",
        ("mmlu",),
        {
            subject: {
                "test": _mmlu_rows(subject, "test", 3),
                "validation": _mmlu_rows(subject, "validation", 1),
                "dev": _mmlu_rows(subject, "dev", 5),  # the 5-shot prompt takes the first five
            }
            for subject in MMLU_SUBJECTS
        },
        Features({"question": S, "subject": S, "choices": List(S), "answer": ClassLabel(names=list("ABCD"))}),
        dataset_info=False,
    ),
    StandIn(
        "allenai/ai2_arc",
        ("arc_challenge", "arc_easy"),
        {
            name: {"train": _arc(f"{name}-train"), "validation": _arc(f"{name}-val"), "test": _arc(name)}
            for name in ("ARC-Challenge", "ARC-Easy")
        },
        Features({"id": S, "question": S, "choices": {"text": List(S), "label": List(S)}, "answerKey": S}),
    ),
    StandIn(
        "Rowan/hellaswag",
        ("hellaswag",),
        {"default": {"train": _hellaswag("train"), "validation": _hellaswag("val"), "test": _hellaswag("test")}},
        Features(
            {
                "ind": I32,
                "activity_label": S,
                "ctx_a": S,
                "ctx_b": S,
                "ctx": S,
                "endings": List(S),
                "source_id": S,
                "split": S,
                "split_type": S,
                "label": S,
            }
        ),
    ),
    StandIn(
        "allenai/winogrande",
        ("winogrande",),
        {
            name: {"train": WINOGRANDE, "validation": WINOGRANDE[::-1], "test": _hidden(WINOGRANDE, "answer", "")}
            for name in ("winogrande_xs", "winogrande_s", "winogrande_m", "winogrande_l", "winogrande_xl")
        },
        Features({"sentence": S, "option1": S, "option2": S, "answer": S}),
    ),
    StandIn(
        "baber/piqa",
        ("piqa",),
        {"default": {"train": PIQA, "validation": PIQA[::-1], "test": _hidden(PIQA, "label", -1)}},
        Features({"goal": S, "sol1": S, "sol2": S, "label": I64}),
    ),
    StandIn(
        "truthfulqa/truthful_qa",
        ("truthfulqa_mc1", "truthfulqa_mc2"),
        {"multiple_choice": {"validation": TRUTHFULQA_MC}},
        Features(
            {
                "question": S,
                "mc1_targets": {"choices": List(S), "labels": List(I32)},
                "mc2_targets": {"choices": List(S), "labels": List(I32)},
            }
        ),
    ),
    StandIn(
        "openai/gsm8k",
        ("gsm8k",),
        {name: {"train": GSM8K, "test": GSM8K[::-1]} for name in ("main", "socratic")},
        Features({"question": S, "answer": S}),
    ),
    StandIn("google/IFEval", ("ifeval",), {"default": {"train": IFEVAL}}, layout="jsonl"),
    StandIn("TAUR-Lab/MuSR", ("leaderboard_musr",), {"default": MUSR}, layout="csv"),
)
# truthful_qa's other config, with its own columns
GENERATION_FEATURES = Features(
    {
        "type": S,
        "category": S,
        "question": S,
        "best_answer": S,
        "correct_answers": List(S),
        "incorrect_answers": List(S),
        "source": S,
    }
)


def _parquet(rows: list[dict], features: Features) -> bytes:
    """A parquet file as push_to_hub writes it: the arrow schema carries the datasets features as metadata."""
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows, schema=features.arrow_schema), buffer)
    return buffer.getvalue()


def _card(front: dict, title: str) -> bytes:
    return f"---\n{yaml.safe_dump(front, sort_keys=False)}---\n# {title}\n\nA tiny stand-in for tests.\n".encode()


def repo_files(stand_in: StandIn) -> dict[str, bytes]:
    """The stand-in's files: data files and a README.md whose metadata says how the datasets library reads them."""
    card = DatasetCardData(**dict(stand_in.card))
    files: dict[str, bytes] = {}
    if stand_in.layout == "jsonl":  # one file, no configs: datasets names its single split "train"
        [(_, splits)] = stand_in.configs.items()
        [(_, rows)] = splits.items()
        files["ifeval_input_data.jsonl"] = "".join(json.dumps(row) + "\n" for row in rows).encode()
        return {**files, "README.md": _card(card.to_dict(), stand_in.repo_id)}
    configs, infos = {}, {}
    for name, splits in stand_in.configs.items():
        data_files = []
        for split, rows in splits.items():
            if stand_in.layout == "csv":
                path = MUSR_FILES[split]
                files[path] = _csv(rows)
            else:
                path = f"{'data' if name == 'default' else name}/{split}-00000-of-00001.parquet"
                files[path] = _parquet(rows, stand_in.features)
            data_files.append({"split": split, "path": path})
        configs[name] = {"data_files": data_files}
        if stand_in.features is not None and stand_in.dataset_info:
            split_infos = SplitDict({split: SplitInfo(split, num_examples=len(rows)) for split, rows in splits.items()})
            infos[name] = DatasetInfo(features=stand_in.features, splits=split_infos, config_name=name)
    if stand_in.repo_id == "truthfulqa/truthful_qa":
        files["generation/validation-00000-of-00001.parquet"] = _parquet(TRUTHFULQA_GEN, GENERATION_FEATURES)
        configs["generation"] = {
            "data_files": [{"split": "validation", "path": "generation/validation-00000-of-00001.parquet"}]
        }
        infos["generation"] = DatasetInfo(features=GENERATION_FEATURES, config_name="generation")
    DatasetInfosDict(infos).to_dataset_card_data(card)
    MetadataConfigs(configs).to_dataset_card_data(card)
    return {**files, "README.md": _card(card.to_dict(), stand_in.repo_id)}


def _csv(rows: list[dict]) -> bytes:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue().encode()


def seed(hub, stand_ins: tuple[StandIn, ...] = STAND_INS) -> dict[str, str]:
    """Commit every stand-in to the loopback Hub as a dataset repo; return repo id -> commit sha."""
    return {s.repo_id: hub.add_commit(s.repo_id, repo_files(s), repo_type="dataset") for s in stand_ins}


def punkt_tab(folder: Path) -> Path:
    """A stand-in of nltk's punkt_tab data under `folder` (an NLTK_DATA root): English Punkt parameters with no
    learned abbreviations, collocations or sentence starters, so sentences end at every full stop."""
    english = Path(folder) / "tokenizers" / "punkt_tab" / "english"
    english.mkdir(parents=True, exist_ok=True)
    for name in ("collocations.tab", "sent_starters.txt", "abbrev_types.txt", "ortho_context.tab"):
        (english / name).write_text("", encoding="utf-8")
    return Path(folder)
