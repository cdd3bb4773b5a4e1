from django.core.management.base import BaseCommand, CommandError

from agents import hosts
from agents.management.commands._common import get_user, run_service
from agents.models import Repository


class Command(BaseCommand):
    help = (
        "Show or set where worker hosts with disks of their own (WORKTREE_SOURCE=clone) clone a repository "
        "and push session branches (a manager only; audited). Without URL: show it."
    )

    def add_arguments(self, parser):
        parser.add_argument("repository", help="the repository's name")
        parser.add_argument("url", nargs="?", help="a git URL (ssh://…, file://…) or '' for the repository's path")
        parser.add_argument("--as", dest="actor", help="who is doing this (needed to set it)")

    def handle(self, *args, repository, url, actor, **options):
        try:
            repo = Repository.objects.get(name=repository)
        except Repository.DoesNotExist:
            raise CommandError(f"no repository named {repository!r}") from None
        if url is None:
            self.stdout.write(
                f"{repo.name}: {repo.remote_url or repo.path} ({'remote_url' if repo.remote_url else 'path'})"
            )
            return
        if not actor:
            raise CommandError("--as USER: say who changes it (a manager)")
        repo = run_service(hosts.repository_set_remote, repository=repo, remote_url=url, by=get_user(actor))
        self.stdout.write(f"{repo.name}: worker hosts clone and push {repo.remote_url or repo.path}")
