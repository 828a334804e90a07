"""Pieces the CPU prefill was made faster with, each against its plain definition: the top-k split's topk path,
the two-sided softmax of the hedgehog maps, SRE from the transposed state, take_rows into a buffer, the phi(k) rows
computed ahead."""

import pytest
import torch

from lola_bench.attention import testing
from lola_bench.attention.common import split_topk, take_rows
from lola_bench.attention.config import LolaConfig
from lola_bench.attention.feature_maps import make_feature_map
from lola_bench.attention.selection import PhiRows, build_table, lin_from
from lola_bench.attention.state import LolaState


def sort_split(scores, keep):
    """The definition: a stable descending sort; the first ``keep`` (ascending) stay, the rest leave, highest first."""
    order = torch.sort(scores, dim=-1, descending=True, stable=True).indices
    return order[..., :keep].sort(dim=-1).values, order[..., keep:]


@pytest.mark.parametrize("case", ["distinct", "ties_inside", "tie_at_cut", "inf_nan", "all_equal"])
@pytest.mark.parametrize("keep", [1, 9, 15, 19])
def test_split_topk_matches_the_stable_sort(case, keep):
    g = torch.Generator().manual_seed(keep)
    s = torch.randn(2, 3, 20, generator=g, dtype=torch.float64)
    if case == "ties_inside":
        s = (s * 2).round() / 2                         # many ties, most away from the cut
    elif case == "tie_at_cut":
        order = s.sort(dim=-1, descending=True).indices
        s.scatter_(-1, order[..., keep - 1:keep + 1], 0.25)   # the last kept and the first leaving score tie
    elif case == "inf_nan":
        s[..., 0], s[..., 3], s[..., 7] = float("inf"), float("nan"), float("-inf")
    elif case == "all_equal":
        s = torch.zeros_like(s)
    idx, out = split_topk(s, keep)
    want_idx, want_out = sort_split(s, keep)
    assert torch.equal(idx, want_idx)
    assert torch.equal(out.sort(dim=-1).values, want_out.sort(dim=-1).values)
    leaving = s.gather(-1, out)                         # highest first (ties in any order)
    assert bool((leaving[..., :-1] >= leaving[..., 1:]).all()) or bool(leaving.isnan().any())


@pytest.mark.parametrize("name", ["hedgehog", "hedgehog-identity"])
def test_two_sided_softmax_is_the_concatenation(name):
    """phi(x) = [softmax(xW), softmax(-xW)] clamped at eps, exactly, and the learned map still trains through it."""
    fm = make_feature_map(name, 3, 8).double()
    if name == "hedgehog":
        fm.layer.data += 0.3 * torch.randn_like(fm.layer)
    x = torch.randn(2, 3, 5, 8, dtype=torch.float64)
    h = torch.einsum("bhld,hdf->bhlf", x, fm.layer) if name == "hedgehog" else x
    want = torch.cat([torch.softmax(h, dim=-1), torch.softmax(-h, dim=-1)], dim=-1).clamp(min=fm.eps)
    assert torch.equal(fm(x), want)
    if name == "hedgehog":
        with torch.enable_grad():
            fm(x).pow(2).sum().backward()
            got = fm.layer.grad.clone()
            fm.layer.grad = None
            w = fm.layer
            h = torch.einsum("bhld,hdf->bhlf", x, w)
            torch.cat([torch.softmax(h, -1), torch.softmax(-h, -1)], -1).clamp(min=fm.eps).pow(2).sum().backward()
        testing.assert_close(got, fm.layer.grad, 1e-12, "grad")


def test_take_rows_into_a_buffer():
    x = torch.randn(2, 3, 7, 4)
    idx = torch.randint(0, 7, (2, 3, 5))
    buf = torch.full((2 * 3 * 5, 4), float("nan"))
    got = take_rows(x, idx, out=buf)
    assert torch.equal(got, take_rows(x, idx)) and got.data_ptr() == buf.data_ptr()
    assert torch.equal(got, x.gather(2, idx.unsqueeze(-1).expand(2, 3, 5, 4)))


def test_phi_rows_computed_ahead_equal_phi_of_the_rows(monkeypatch):
    """Rows asked for in boundary-sized steps come from larger feature-map calls; the same values as phi of exactly
    those rows, whatever the piece size."""
    from lola_bench.attention import selection

    cfg = LolaConfig(window=4, sparse=3, feature_map="hedgehog", gqa="grouped")
    p = testing.make_params(cfg, 6, 2, 16, dtype=torch.float64)
    _, k, v = testing.qkv(50, 6, 2, 2, 16, dtype=torch.float64)
    st = LolaState()
    st.init(2, 2, 6, 16, p.feature_dim, torch.float64, "cpu", False)
    tab = build_table(k, v, st, p)
    for piece_bytes in (1, 6 * 2 * p.feature_dim * 8 * 10, 1 << 30):
        monkeypatch.setattr(selection, "PHI_BYTES", piece_bytes)
        rows = PhiRows(tab, p, torch.float64, 46)
        for lo in range(0, 46, 4):
            hi = min(46, lo + 4)
            want = p.feature_map_k(tab.k[:, :, lo:hi].repeat_interleave(3, dim=1))
            testing.assert_close(rows.rows(lo, hi), want, 1e-14)


def test_free_slots_are_never_pinned_as_sinks():
    """The slots come with room for a boundary's leaving pairs; a score taken while some are still free must not pin
    the pairs written into them later (the sink mask is cached between boundaries)."""
    from lola_bench.attention.selection import Slots

    cfg = LolaConfig(window=8, sparse=6, sinks=3, feature_map="hedgehog", gqa="grouped")
    p = testing.make_params(cfg, 4, 2, 16, dtype=torch.float64)
    _, k, v = testing.qkv(40, 4, 2, 1, 16, dtype=torch.float64)
    st = LolaState()
    st.init(1, 2, 4, 16, p.feature_dim, torch.float64, "cpu", False)
    tab = build_table(k, v, st, p)
    slots = Slots(tab, 9, p, torch.float64, PhiRows(tab, p, torch.float64, 32))
    lin = lin_from(torch.rand(1, 4, p.feature_dim, 16, dtype=torch.float64), torch.rand(1, 4, p.feature_dim,
                                                                                          dtype=torch.float64) + 1)
    first = slots.score(p, lin)
    assert torch.isinf(first[..., :3]).all() and not torch.isinf(first[..., 3:9]).any()
    new = slots.add(tab, 9, 5)                       # positions 9 .. 13 into free slots
    scores = slots.score(p, lin).gather(2, new)
    assert torch.isfinite(scores).all()
    assert torch.equal(slots.pos.gather(2, new), torch.arange(9, 14).expand(1, 2, 5))
