"""The tour: the article routing_sim started from, told in eleven lessons, each one command.

Every lesson gives the idea in two sentences, one command to run, what to look at in its
output (or on its replay page) and one question, which the next lesson's command answers.
This module is the one place the lessons live: ``routing-sim tour`` prints them,
``routing-sim list`` groups the scenarios under them, and docs/en/tour.md and
docs/zh/tour.md hold :func:`markdown` of them (a test keeps the pages equal to it).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import NamedTuple

from ..errors import InvalidArgumentError
from ..results.run import display_width

__all__ = ["LANGUAGES", "LESSONS", "Lesson", "Words", "lesson_of", "markdown", "text"]

LANGUAGES = ("en", "zh")
WIDTH = 92                  # terminal columns of the printed tour
CLOSING = "，。、；：！？）》」』"


class Words(NamedTuple):
    """A lesson in one language."""

    title: str
    idea: str               # two sentences
    look: str               # what to look at in the command's output or page
    question: str           # answered by the next lesson's command


@dataclass(frozen=True)
class Lesson:
    """One step of the tour: its command, the scenarios ``routing-sim list`` shows under it,
    and its words in English and Chinese."""

    number: int
    command: str
    scenarios: tuple[str, ...]
    en: Words
    zh: Words

    def words(self, language: str = "en") -> Words:
        return self.en if _checked(language) == "en" else self.zh


LESSONS = (
    Lesson(1, "routing-sim demo", (), Words(
        "A token is a node",
        "Every token is a node on a network with three vectors: a query (what it is looking "
        "for: the request), a key (how others find it: the tag) and a value (what it hands "
        "over: the payload). Attention is each node deciding at runtime which nodes to pull "
        "data from, and how much of each.",
        "Each token's routing table: where its budget of 1 went and the score behind each "
        "share. Then the messages: 21 routes, so 21 each of QUERY, SCORE, PULL and VALUE, "
        "and the verdict against matrix attention. The words label random vectors, so the "
        "shares show the mechanism, not English.",
        "What travels between two nodes before any value moves?"), Words(
        "token 就是节点",
        "每个 token 都是网络上的一个节点，带着三个向量：query（它在找什么，即请求）、key"
        "（别人怎么找到它，即标签）和 value（被选中时交出的内容，即 payload）。注意力就是每个"
        "节点在运行时自己决定从哪些节点拉数据、各拉多少。",
        "每个 token 的路由表：它那份总量为 1 的预算分到了哪里，每一份背后的匹配分数是多少。"
        "然后是消息：21 条路由，所以 QUERY、SCORE、PULL、VALUE 各 21 条；最后是和矩阵形式"
        "注意力的对照结论。这些词只是随机向量的名字：分配比例展示的是机制，不是英语的含义。",
        "在任何 value 开始移动之前，两个节点之间传的是什么？")),
    Lesson(2, 'routing-sim trace --format mermaid --tokens "the cat sat" --causal --query 2',
           ("masks_and_topologies", "sparse_patterns", "long_context"), Words(
        "Match scores",
        "The asking node sends its query to every node it may read, and each answers with "
        "one number, the match score q·k·scale: a graded relevance, not a yes or no. The key "
        "never leaves its node; only its score travels.",
        "Token 2's three QUERY messages going out, one SCORE s=... coming back from each "
        "token it may read (the causal mask allows tokens 0, 1 and 2), and the note "
        "\"all scores in\" where the softmax starts. Paste the output into any Mermaid "
        "viewer to see it drawn.",
        "Scores can be negative and have no fixed scale: how does a node turn them into "
        "amounts it can pull?"), Words(
        "匹配分数",
        "发起查询的节点把 query 发给它可以读取的每个节点，每个节点回一个数：匹配分数 "
        "q·k·scale。它是连续的相关度，不是“是/否”；key 从不离开自己的节点，传回来的只有分数。",
        "token 2 发出的三条 QUERY 消息，它能读的每个 token（因果掩码允许 0、1、2）各回一条 "
        "SCORE s=...，以及 softmax 开始处的注释 “all scores in”。把输出贴进任何 Mermaid "
        "查看器就能看到图。",
        "分数有正有负、量纲不定：节点怎样把它们变成可以照着拉取的份额？")),
    Lesson(3, "routing-sim run routing_table", ("routing_table",), Words(
        "Softmax as a budget",
        "Softmax turns the scores into shares that are positive and add up to 1: a budget, "
        "like the traffic weights of a load balancer or CPU time slices. The scale (an "
        "inverse temperature) decides how sharply the budget follows the scores.",
        "Scores log 5, log 3 and log 2 becoming shares 0.50, 0.30 and 0.20; the weighted "
        "pull 0.5·v_A + 0.3·v_B + 0.2·v_C = [7.0, 5.0]; the scale knob flattening and "
        "sharpening the same table.",
        "The shares are decided at one node: how do the values get there, and when is the "
        "output ready?"), Words(
        "softmax 就是预算分配",
        "softmax 把分数变成都为正、加起来等于 1 的份额：一份预算，就像负载均衡的流量权重或 "
        "CPU 时间片。scale（温度的倒数）决定预算跟分数跟得有多“陡”。",
        "分数 log 5、log 3、log 2 变成份额 0.50、0.30、0.20；加权拉取 0.5·v_A + 0.3·v_B + "
        "0.2·v_C = [7.0, 5.0]；scale 旋钮让同一张路由表变平或变尖。",
        "份额是在一个节点上算出来的：value 怎样到达这里，输出什么时候就绪？")),
    Lesson(4, "routing-sim replay --causal -o run.html", ("exact_numerics",), Words(
        "Pull and aggregate",
        "With its routing table ready, a node sends each source a PULL carrying its share, "
        "and each source answers with its VALUE. The node adds the weighted values up in a "
        "fixed order, and that sum is its attention output.",
        "Open run.html in a browser and press play: QUERY dots leave each token, SCORE dots "
        "come back, then PULL goes out and VALUE returns. Click a token for its routing "
        "table, hover one of its routes for the messages on it, and watch the token turn "
        "green when its last value has arrived.",
        "Why blend every value instead of pulling only from the best match?"), Words(
        "拉取并聚合",
        "路由表一旦就绪，节点就给每个来源发一条带着份额的 PULL，每个来源回一条 VALUE。节点按"
        "固定顺序把加权后的 value 相加，这个和就是它的注意力输出。",
        "在浏览器里打开 run.html 并点 play：QUERY 圆点离开各个 token，SCORE 圆点返回，接着 "
        "PULL 发出、VALUE 回来。点一个 token 看它的路由表，把鼠标移到它的某条路由上看这条路由"
        "上的消息；token 收到最后一个 value 时会变绿。",
        "为什么要把所有 value 混合起来，而不是只从最匹配的那个拉？")),
    Lesson(5, "routing-sim run soft_vs_hard", ("soft_vs_hard",), Words(
        "Soft vs hard routing",
        "Attention is a soft aggregation: several tokens contribute, with shares that move "
        "smoothly as the scores move. A hard top-1 route sends the whole budget to one "
        "source, so a tiny change flips the route and the output jumps.",
        "B's key is nudged by up to ±0.002, so its score moves by query·nudge; the soft "
        "output moves in the fourth decimal while the top-1 output jumps from [1.0, 0.0] "
        "to [0.0, 1.0].",
        "So far every node asked and answered inside one sequence: what if the questions "
        "come from somewhere else?"), Words(
        "软路由与硬路由",
        "注意力是软聚合：多个 token 一起贡献，份额随分数连续变化。硬的 top-1 路由把整份预算"
        "交给一个来源，分数稍一变，路由就翻转，输出随之跳变。",
        "B 的 key 被推动至多 ±0.002，所以它的分数变化 query·nudge；软路由的输出只在小数点后"
        "第四位移动，top-1 的输出却从 [1.0, 0.0] 跳到 [0.0, 1.0]。",
        "到目前为止，每个节点都在同一个序列内部提问和回答：如果问题来自别处呢？")),
    Lesson(6, "routing-sim run self_vs_cross", ("self_vs_cross",), Words(
        "Self vs cross attention",
        "In self-attention the queries, keys and values come from one sequence: the nodes "
        "of one cluster talk to each other. In cross-attention the queries come from one "
        "sequence and the keys and values from another: one system calling another "
        "system's data.",
        "The routing table of 'boxes' over the four words of its own sequence; then an "
        "orders service whose 3 queries route over 5 inventory shelves: 15 routes, every "
        "message crossing between the two clusters, with L ≠ S.",
        "One routing table blends everything into one mixture: what if a token needs "
        "different things from different places?"), Words(
        "自注意力与交叉注意力",
        "自注意力里 query、key、value 都来自同一个序列：同一个集群里的节点互相通信。交叉"
        "注意力里 query 来自一个序列，key 和 value 来自另一个：一个系统在调用另一个系统的数据。",
        "先看 'boxes' 在自己序列的四个词上的路由表；然后是订单服务的 3 个 query 路由到库存"
        "服务的 5 个货架上：15 条路由，每条消息都在两个集群之间穿行，L ≠ S。",
        "一张路由表只能把所有东西混成一份：如果一个 token 要从不同地方取不同的东西呢？")),
    Lesson(7, "routing-sim run heads_specialise", ("multi_head", "heads_specialise"), Words(
        "Heads: parallel routing strategies",
        "Each head has its own query, key and value projections and so its own routing "
        "table: multi-head attention is several routing strategies running side by side. "
        "Nobody assigns them; in training each head settles on a relation of its own.",
        "Token 5's routing table in each of three heads, near uniform before training and, "
        "after it, each head on a different relation (previous, next, named token); the "
        "one-head layer of the same width stuck near two thirds of its starting loss. It "
        "trains for about 8 s.",
        "How can training move a routing decision at all?"), Words(
        "多头：并行的路由策略",
        "每个头都有自己的 query、key、value 投影，也就有自己的路由表：多头注意力就是几套路由"
        "策略并排运行。没有人给它们分工，训练中每个头自己落到一种关系上。",
        "三个头里 token 5 的路由表：训练前几乎均匀，训练后每个头各守一种关系（前一个、后一个、"
        "被点名的 token）；同样宽度的单头层停在起始损失的三分之二左右。训练约需 8 秒。",
        "训练究竟怎么能改变一个路由决策？")),
    Lesson(8, "routing-sim run learning_to_route", ("learning_to_route",), Words(
        "Routing that is differentiable is learned",
        "Softmax and a weighted sum make every share a smooth function of the scores, so "
        "the loss has a gradient with respect to where the budget goes, and it travels back "
        "along the routes. The routing rule is trained, not written; a hard top-1 rule has "
        "no such gradient and never moves.",
        "The task line; the soft-routing loss falling to about 0.0001 while hard top-1 "
        "routing stays where it started; token 4's routing table going from 0.20 everywhere "
        "to 1.00 on token 3.",
        "One layer routes once: what can a model do by routing again on what the first "
        "routing brought?"), Words(
        "可微的路由才能被学习",
        "softmax 加上加权求和让每个份额都是分数的光滑函数，于是损失对“预算去哪儿”有梯度，梯度"
        "沿着路由传回去。路由规则是训练出来的，不是写出来的；硬的 top-1 规则没有这样的梯度，"
        "永远不动。",
        "任务说明那一行；软路由的损失降到 0.0001 左右，硬 top-1 路由停在原地；token 4 的路由表"
        "从处处 0.20 变成 token 3 上的 1.00。",
        "一层只路由一次：在第一次路由取回的东西上再路由一次，模型能做到什么？")),
    Lesson(9, "routing-sim run induction_heads", ("induction_heads", "real_model", "kv_cache"),
           Words(
        "Layer after layer",
        "A Transformer repeats routing and aggregation: the next layer's queries and keys "
        "are computed from what the previous layer pulled. So a second routing can find "
        "what no single routing can, such as the token that followed the previous "
        "occurrence of the current one.",
        "Layer 1's head routing each token to the token just before it; layer 2's head "
        "routing to the token that followed the previous occurrence of the current token, "
        "and copying it; the copying accuracy next to a one-layer model that fails.",
        "Every run so far had a perfect network: what happens when messages are lost, "
        "duplicated or late?"), Words(
        "一层接一层",
        "Transformer 反复执行路由与聚合：下一层的 query 和 key 由上一层拉取到的内容算出。"
        "所以第二次路由能找到单次路由找不到的东西，比如当前 token 上一次出现时紧跟在它后面的"
        "那个 token。",
        "第 1 层的头把每个 token 路由到紧挨在它前面的 token；第 2 层的头路由到当前 token "
        "上一次出现之后的那个 token，并把它复制过来；旁边是复制准确率，以及做不到这件事的"
        "单层模型。",
        "到目前为止网络都是完美的：消息丢失、重复或迟到时会怎样？")),
    Lesson(10, "routing-sim run network_chaos", ("network_chaos", "streaming_softmax"), Words(
        "What breaks on a real network",
        "On a real network messages are delayed, reordered, lost and duplicated. With "
        "retries and receivers that ignore copies every route still delivers, and because "
        "a node adds its shares in a fixed order the output keeps its bits; without "
        "retries, the run has to say what it lost.",
        "The lost, dup and resent columns of the stormy run, and \"bit-identical to the "
        "clean network: yes\"; without retries, strict mode naming the routes that never "
        "delivered and degrade mode renormalising over what arrived.",
        "All the tokens lived on one simulated cluster: how does attention spread over "
        "several machines?"), Words(
        "真实网络上会坏掉什么",
        "真实网络上的消息会延迟、乱序、丢失、重复。有了重试和忽略重复副本的接收方，每条路由"
        "仍然送达，又因为节点按固定顺序累加份额，输出的每一位都不变；没有重试时，这次运行必须"
        "说清它丢了什么。",
        "风暴网络那次运行的 lost、dup、resent 三列，以及 “bit-identical to the clean "
        "network: yes”；没有重试时，strict 模式列出没送达的路由，degrade 模式在到达的部分上"
        "重新归一化。",
        "所有 token 都在一个模拟集群上：注意力怎样分布到多台机器上？")),
    Lesson(11, "routing-sim run ring_attention",
           ("ring_attention", "ulysses_vs_ring", "causal_balance", "tree_decoding"), Words(
        "Across machines",
        "A long sequence does not fit on one device, so its keys and values are split "
        "across devices and their blocks travel around a ring while each device works on "
        "the block it holds. The cost is bytes on the links and idle time, and both follow "
        "closed forms.",
        "Bytes sent per device equal to 2(P-1)(N/P)·H·d·s; the per-device timeline, where "
        "the transfers hide behind compute at block size c*; the idle share falling to "
        "about 0 from c* on.",
        "Is a ring always the best way to split attention across devices? "
        "(`routing-sim run ulysses_vs_ring` answers it; `routing-sim list` shows every "
        "scenario.)"), Words(
        "跨机器",
        "长序列放不进一台设备，于是 key 和 value 被切分到多台设备上，分块沿着环传递，每台设备"
        "处理手上那一块。代价是链路上的字节数和空等时间，两者都符合闭式公式。",
        "每台设备发送的字节数等于 2(P-1)(N/P)·H·d·s；每台设备的时间线，块大小为 c* 时传输"
        "藏在计算后面；从 c* 起空等比例降到 0 左右。",
        "环一定是把注意力分到多台设备上的最好办法吗？（`routing-sim run ulysses_vs_ring` "
        "回答它；`routing-sim list` 列出全部场景。）")),
)


def lesson_of(number: int) -> Lesson:
    """The lesson with this number (1 to 11).

    Examples
    --------
    >>> lesson_of(3).command
    'routing-sim run routing_table'
    """
    if isinstance(number, bool) or not 1 <= number <= len(LESSONS):
        raise InvalidArgumentError(f"the tour has lessons 1 to {len(LESSONS)}, got {number!r}")
    return LESSONS[number - 1]


def text(number: int | None = None, language: str = "en") -> str:
    """What ``routing-sim tour [N]`` prints: every lesson, or lesson ``number``.

    Examples
    --------
    >>> print(text(5).splitlines()[0])
    Lesson 5 of 11: Soft vs hard routing
    """
    lessons = LESSONS if number is None else (lesson_of(number),)
    blocks = [_lesson_text(lesson, _checked(language), alone=number is not None)
              for lesson in lessons]
    if number is None:
        heading = {"en": "The tour: attention as a routing table, in 11 lessons "
                         "(`routing-sim tour N` prints one)",
                   "zh": "导览：把注意力看成路由表，共 11 课（`routing-sim tour N` 只打印一课）"}
        blocks.insert(0, heading[language])
    return "\n\n".join(blocks)


def markdown(language: str = "en") -> str:
    """The lessons as the Markdown of docs/LANGUAGE/tour.md (the page holds this text).

    Examples
    --------
    >>> markdown().splitlines()[0]
    '## 1. A token is a node'
    """
    look, question = {"en": ("Look at:", "Question:"),
                      "zh": ("看什么：", "问题：")}[_checked(language)]
    sections = []
    for lesson in LESSONS:
        words = lesson.words(language)
        sections.append(f"## {lesson.number}. {words.title}\n\n{words.idea}\n\n```\n"
                        f"{lesson.command}\n```\n\n**{look}** {words.look}\n\n"
                        f"**{question}** {words.question}\n")
    return "\n".join(sections)


def _checked(language: str) -> str:
    if language not in LANGUAGES:
        raise InvalidArgumentError(f"language must be one of {LANGUAGES}, got {language!r}")
    return language


def _lesson_text(lesson: Lesson, language: str, alone: bool) -> str:
    """One lesson for the terminal; printed ``alone``, it ends with the next lesson's command."""
    words = lesson.words(language)
    labels = {"en": ("Lesson {} of {}: {}", "run:", "look at:", "question:", "next:"),
              "zh": ("第 {} 课（共 {} 课）：{}", "运行：", "看什么：", "问题：",
                     "下一课：")}[language]
    title, run, look, question, after = labels
    rows = [(run, lesson.command), (look, words.look), (question, words.question)]
    if alone and lesson.number < len(LESSONS):
        flag = "" if language == "en" else " --lang zh"
        rows.append((after, f"routing-sim tour {lesson.number + 1}{flag}"))
    width = max(display_width(label) for label, _ in rows) + 1
    lines = [title.format(lesson.number, len(LESSONS), words.title)]
    lines += _wrap(words.idea, "  ", "  ")
    lines.append("")
    for label, body in rows:
        first = "  " + label + " " * (width - display_width(label))
        lines += _wrap(body, first, " " * display_width(first))
    return "\n".join(lines)


def _wrap(body: str, first: str, rest: str) -> list[str]:
    """``body`` in lines of at most :data:`WIDTH` terminal columns. Breaks fall at spaces and
    beside wide characters (Chinese has no spaces), never inside a word or a command."""
    pieces = re.findall(r"[^\s\u2e80-\uffef]+|[\u2e80-\uffef]|\s+", body)
    lines, line = [], first
    for piece in pieces:
        fresh = line in (first, rest)
        # Chinese never starts a line with closing punctuation: it may stick out instead.
        if display_width(line) + display_width(piece) > WIDTH and not fresh \
                and piece not in CLOSING:
            lines.append(line.rstrip())
            line = rest
            fresh = True
        if not (fresh and piece.isspace()):
            line += piece
    lines.append(line.rstrip())
    return lines
