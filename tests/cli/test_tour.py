"""The tour: eleven lessons in the article's order, each command runs and shows what the
lesson says to look at, and the pages docs/en/tour.md and docs/zh/tour.md hold the lessons."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from routing_sim import scenarios
from routing_sim.cli import main, tour
from routing_sim.errors import InvalidArgumentError
from routing_sim.results.run import display_width

ROOT = Path(__file__).resolve().parents[2]
# The article's order, as issue 26 lists it: a word each lesson's English title must hold.
ORDER = ["node", "score", "budget", "pull", "soft", "cross", "head", "learn", "layer",
         "network", "machines"]
# What each lesson tells the learner to look at, as it appears in the command's output.
SHOWN = {1: "QUERY          21", 2: "SCORE s=", 3: "= [7.0, 5.0]", 4: "wrote run.html",
         5: "[0.0, 1.0]", 6: "15 order->shelf routes", 7: "previous token",
         8: "the task: each of 6 tokens must pull", 9: "layer 2",
         10: "bit-identical to the clean network: yes", 11: "2(P-1)(N/P)·H·d·s = 24576: equal"}


def test_eleven_lessons_in_the_article_order():
    assert [lesson.number for lesson in tour.LESSONS] == list(range(1, 12))
    titles = [lesson.en.title.lower() for lesson in tour.LESSONS]
    assert all(word in title for word, title in zip(ORDER, titles)), titles


@pytest.mark.parametrize("lesson", tour.LESSONS, ids=lambda lesson: str(lesson.number))
def test_each_lesson_has_two_sentences_one_command_and_a_question(lesson):
    sentence_ends = {"en": r"[.!?](?=\s|$)", "zh": r"[。！？]"}
    for language in tour.LANGUAGES:
        words = lesson.words(language)
        assert len(re.findall(sentence_ends[language], words.idea)) == 2, words.idea
        assert words.look and words.title
        assert words.question.rstrip(" )）。.").count("?" if language == "en" else "？") == 1
    assert lesson.command.startswith("routing-sim ") and "\n" not in lesson.command


def test_every_scenario_sits_under_one_lesson():
    placed = [name for lesson in tour.LESSONS for name in lesson.scenarios]
    assert len(placed) == len(set(placed))
    assert set(placed) == set(scenarios.available())


def test_each_next_command_answers_the_question_before_it():
    """The question of lesson n is answered by lesson n + 1's command: the two are adjacent,
    and printing lesson n alone ends with the way to lesson n + 1."""
    for lesson in tour.LESSONS[:-1]:
        alone = tour.text(lesson.number)
        assert alone.rstrip().endswith(f"routing-sim tour {lesson.number + 1}")
        assert alone.index("question:") < alone.index("next:")
    assert "ulysses_vs_ring" in tour.LESSONS[-1].en.question


@pytest.mark.parametrize("language", tour.LANGUAGES)
def test_the_doc_pages_hold_the_lessons_word_for_word(language):
    page = (ROOT / "docs" / language / "tour.md").read_text(encoding="utf-8")
    assert tour.markdown(language) in page
    assert page.index("## 1. ") < page.index("## 11. ")


@pytest.mark.parametrize("language", tour.LANGUAGES)
def test_printed_lines_fit_the_terminal(language):
    lines = tour.text(language=language).splitlines()
    too_wide = [line for line in lines if display_width(line) > tour.WIDTH + 2]
    assert too_wide == []
    # Wrapping never splits a command or an identifier.
    for lesson in tour.LESSONS:
        assert lesson.command in tour.text(lesson.number, language)


def test_unknown_lessons_and_languages_are_refused():
    with pytest.raises(InvalidArgumentError, match="lessons 1 to 11, got 12"):
        tour.lesson_of(12)
    with pytest.raises(InvalidArgumentError, match="language must be one of"):
        tour.text(1, "fr")


@pytest.mark.parametrize("lesson", tour.LESSONS, ids=lambda lesson: str(lesson.number))
def test_every_command_of_the_tour_runs_and_shows_what_it_says(lesson, tmp_path, monkeypatch,
                                                                capsys):
    argv = shlex.split(lesson.command)
    assert argv[0] == "routing-sim"
    if argv[1:3] == ["run", "heads_specialise"]:              # ~8 s of training: 5 steps
        monkeypatch.setattr(scenarios.load("heads_specialise"), "STEPS", 5)
    if argv[1:3] == ["run", "induction_heads"]:               # ~15 s of training: 5 steps
        monkeypatch.setattr(scenarios.load("induction_heads"), "STEPS", 5)
    monkeypatch.chdir(tmp_path)
    assert main(argv[1:]) == 0
    printed = capsys.readouterr().out
    assert SHOWN[lesson.number] in printed
    if argv[1] == "replay":
        page = (tmp_path / "run.html").read_text(encoding="utf-8")
        assert "random vectors named after words" in page
