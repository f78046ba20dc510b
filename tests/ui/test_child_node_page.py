"""Issue 17's Done-when in the browser: a child's chart drawn in the UI comes
through its parent. A claimed parent agent, three children streaming to it,
one Cloud; headless Chromium opens a child's node page from the Nodes view,
sees "via the-parent" and its charts drawn from rows the parent relayed, then
the child killed: the page says it is unreachable without a reload."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.fixtures.children import Setup, parent_with_three_children
from tests.fixtures.cloud import Cloud
from tests.fixtures.ui import sign_in

pytestmark = pytest.mark.browser


@pytest.fixture
def family(
    start_cloud: Callable[..., Cloud], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Setup]:
    with parent_with_three_children(start_cloud, tmp_path_factory) as s:
        yield s


def test_a_childs_charts_are_drawn_through_its_parent(family: Setup, open_tab: Any) -> None:
    s = family
    child = s.nodes()["child-1"]
    child_id = child["id"]
    answered_before = s.parent.aclk()["queries_answered"]
    tab = open_tab()
    page = tab.page
    sign_in(tab, s.cloud)
    page.goto(f"{s.cloud.url}/spaces/{s.cloud.space_id}/rooms/{child['rooms'][0]}")
    row = page.locator(f"tr[data-node-id='{child_id}']")
    row.wait_for(timeout=20_000)
    assert "via the-parent" in row.inner_text()
    row.locator("a").first.click()
    page.wait_for_selector("#node-view")
    assert "via the-parent" in page.locator("main").inner_text()
    page.wait_for_function(
        "() => [...document.querySelectorAll('.chart')].some(c => +c.dataset.rows > 1)",
        timeout=30_000,
    )
    cpu = page.locator(".chart[data-chart='system.cpu']")
    assert cpu.locator("canvas").count() == 1 and int(cpu.get_attribute("data-rows") or 0) > 1
    tab.shot("child-node-charts")
    # The rows came over the parent's link: it answered the page's queries.
    assert s.parent.aclk()["queries_answered"] > answered_before

    s.children["child-1"].proc.kill()
    page.wait_for_selector("#unreachable", state="visible", timeout=30_000)
    assert "unreachable" in page.locator("#node-state").inner_text()
    tab.shot("child-node-unreachable")
