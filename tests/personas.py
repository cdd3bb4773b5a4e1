"""The people every permission test talks about, in one place.

Pod A ("alpha"): lead ``lena`` (pod lead), STO ``sam`` (member, owns the session), member ``mia``.
Pod B ("bravo"): ``otto`` (an outsider to pod A, lead of B).
Fleet-wide: ``max`` (manager), ``leo`` (leader: reads, never acts).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from agents.models import Pod, PodMembership, Repository, User

PASSWORD = "pw-for-tests"


@dataclass
class Fleet:
    alpha: Pod
    bravo: Pod
    lead: User
    sto: User
    member: User
    outsider: User
    manager: User
    leader: User
    repo: Repository


def make_user(username: str, role: str = User.Role.MEMBER) -> User:
    user = User.objects.create_user(username=username, password=PASSWORD, role=role)
    return user


def make_fleet(repo_path: Path) -> Fleet:
    alpha = Pod.objects.create(slug="alpha", name="Alpha")
    bravo = Pod.objects.create(slug="bravo", name="Bravo")
    lead, sto, member = make_user("lena"), make_user("sam"), make_user("mia")
    outsider = make_user("otto")
    manager = make_user("max", User.Role.MANAGER)
    leader = make_user("leo", User.Role.LEADER)
    PodMembership.objects.create(pod=alpha, user=lead, role=PodMembership.Role.LEAD)
    PodMembership.objects.create(pod=alpha, user=sto, role=PodMembership.Role.MEMBER)
    PodMembership.objects.create(pod=alpha, user=member, role=PodMembership.Role.MEMBER)
    PodMembership.objects.create(pod=bravo, user=outsider, role=PodMembership.Role.LEAD)
    repo = Repository.objects.create(name="demo", path=str(repo_path), default_branch="main")
    return Fleet(alpha, bravo, lead, sto, member, outsider, manager, leader, repo)
