"""Data for tokjax: bundled corpora, splits, sequence packing, batches and synthetic tasks.

Nothing here downloads anything or caches on disk.

Corpora:      :func:`load_corpus`, :func:`list_corpora`, :class:`Corpus`
Splitting:    :func:`split_corpus`
Packing:      :func:`pack_sequences`, :func:`batches`, :func:`batch_indices`,
              :func:`steps_per_epoch`, :func:`epoch_permutation`, :class:`TokenDataset`
Synthetic:    :func:`arithmetic`, :func:`copy_spans`, :func:`markov_source`, :func:`mazes`,
              :func:`word_problems` / :func:`check_answer` (verifiable word problems),
              :func:`star_graphs` / :func:`check_path` (star-graph path finding, P14/P8),
              :func:`translation_pairs` / :func:`few_shot_prompts` (lexicon translation, few-shot, P76)
Retrieval:    :func:`pydocs_retrieval` (pydoc-topic paragraphs, held-out-sentence queries, graded qrels)
Open sets:    :func:`open_sets` (many-answer questions graded against the Python stdlib, P73)
Facts:        :func:`python_facts` / :func:`check_fact` (misconception-prone Python expressions, truth = eval, P1)
Vision/series: :func:`glyphs`, :func:`moving_glyphs` (bitmap-font digits), :func:`point_sets` (voxel
              clusters), :func:`klines` (regime-switching GBM + GARCH(1,1) OHLCV)
"""

from tokjax.data._arithmetic import ArithmeticExample, arithmetic, digit_steps, extract_answer
from tokjax.data._copy_spans import CopySpans, copy_spans
from tokjax.data._corpora import Corpus, list_corpora, load_corpus, markdown_play_to_text
from tokjax.data._dataset import TokenDataset, Tokenizer
from tokjax.data._glyphs import GLYPH_FONT, Glyphs, MovingGlyphs, glyphs, moving_glyphs, render_glyphs
from tokjax.data._klines import OHLCV, KLines, klines
from tokjax.data._markov import MarkovSource, empirical_conditional_entropy, markov_source
from tokjax.data._mazes import AOTP, AOTP_SPECIALS, MOVES, Maze, mazes
from tokjax.data._open_sets import OpenSetProbe, distinct_correct, normalize_answer, open_sets
from tokjax.data._packing import (
    batch_indices,
    batches,
    epoch_permutation,
    pack_sequences,
    steps_per_epoch,
)
from tokjax.data._python_facts import (
    FAMILIES as PYTHON_FACT_FAMILIES, PythonFact, check_fact, extract_fact_answer, python_facts,
)
from tokjax.data._point_sets import PointSets, count_clusters, point_sets, valid_point_sets
from tokjax.data._retrieval import RetrievalSet, pydocs_retrieval
from tokjax.data._split import split_corpus
from tokjax.data._star_graphs import (
    STAR_GRAPH_PRESETS, StarGraph, StarGraphs, StarGraphVocab, check_path, exact_path_match, is_valid_path, star_graphs,
)
from tokjax.data._translation_pairs import (
    FewShotSet, TranslationPairs, TranslationVocab, few_shot_prompts, pair_stream_windows, translate,
    translation_pairs, translation_vocab,
)
from tokjax.data._word_problems import (
    ANSWER_INSTRUCTION, WORD_PROBLEM_LEVELS, WORD_PROBLEM_STYLES, WordProblem, check_answer, word_problems,
)

__all__ = [
    "GLYPH_FONT", "Glyphs", "MovingGlyphs", "glyphs", "moving_glyphs", "render_glyphs",
    "OHLCV", "KLines", "klines", "PointSets", "count_clusters", "point_sets", "valid_point_sets",
    "STAR_GRAPH_PRESETS", "StarGraph", "StarGraphs", "StarGraphVocab", "check_path", "exact_path_match",
    "is_valid_path", "star_graphs",
    "RetrievalSet", "pydocs_retrieval",
    "FewShotSet", "TranslationPairs", "TranslationVocab", "few_shot_prompts", "pair_stream_windows", "translate",
    "translation_pairs", "translation_vocab",
    "OpenSetProbe", "distinct_correct", "normalize_answer", "open_sets",
    "PYTHON_FACT_FAMILIES", "PythonFact", "check_fact", "extract_fact_answer", "python_facts",
    "ANSWER_INSTRUCTION",
    "WORD_PROBLEM_LEVELS", "WORD_PROBLEM_STYLES",
    "WordProblem",
    "check_answer",
    "word_problems",
    "ArithmeticExample",
    "Corpus",
    "CopySpans",
    "MOVES",
    "MarkovSource",
    "AOTP",
    "AOTP_SPECIALS",
    "Maze",
    "TokenDataset",
    "Tokenizer",
    "arithmetic",
    "batch_indices",
    "batches",
    "copy_spans",
    "digit_steps",
    "empirical_conditional_entropy",
    "epoch_permutation",
    "extract_answer",
    "list_corpora",
    "load_corpus",
    "markdown_play_to_text",
    "markov_source",
    "mazes",
    "pack_sequences",
    "split_corpus",
    "steps_per_epoch",
]
