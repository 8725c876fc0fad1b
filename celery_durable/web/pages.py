"""The console's HTML pages and their forms.

``GET /`` (the list), ``GET /workflows/{id}`` (one instance: header, timeline, waiting
at, inbox, journal), ``GET /workflows/{id}/journal.json`` (the raw journal, downloaded),
``POST /workflows/{id}/{signal|cancel|terminate|retry}`` and ``POST /bulk`` (the list's
selected rows). Forms carry a CSRF token and a confirmation: a POST without
``confirm=yes`` (the page's script asks first, then sets it) answers with a page that asks.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, quote, urlencode

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData, UploadFile
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from celery_durable.engine.journal import Status
from celery_durable.web.actions import ACTIONS, perform, signal_from_text
from celery_durable.web.api import MAX_BODY, actor_of, durable_of, json_response
from celery_durable.web.errors import ConsoleError
from celery_durable.web.queries import ListQuery, list_workflows, workflow_view
from celery_durable.web.security import CSRF_COOKIE, CSRF_FIELD, check_csrf, new_csrf_token
from celery_durable.web.timeline import build_timeline

LIST_REFRESH_SECONDS = 5
WORKFLOW_REFRESH_SECONDS = 2
JOURNAL_PAGE = 500
BULK_LIMIT = 500


def render(request: Request, template: str, context: dict[str, Any], status: int = 200) -> Response:
    """A page from the console's templates, with the CSRF cookie set."""
    token = request.cookies.get(CSRF_COOKIE) or new_csrf_token()
    root = request.scope.get("root_path", "")
    context = {"root": root, "csrf_token": token, "csrf_field": CSRF_FIELD} | context
    response: Response = request.app.state.templates.TemplateResponse(
        request, template, context, status_code=status
    )
    if request.cookies.get(CSRF_COOKIE) != token:
        response.set_cookie(CSRF_COOKIE, token, httponly=True, samesite="strict", path=root or "/")
    return response


def workflow_url(request: Request, workflow_id: str, **params: str) -> str:
    """The page of ``workflow_id`` (with query ``params``)."""
    url = f"{request.scope.get('root_path', '')}/workflows/{quote(workflow_id, safe=':~@')}"
    return url + ("?" + urlencode(params) if params else "")


async def list_page(request: Request) -> Response:
    """``GET /``: counts, filters, the page of instances and the link to the next."""
    query = ListQuery.parse(request.query_params)
    page = await run_in_threadpool(list_workflows, durable_of(request), query)
    context = {
        "page": page,
        "query": query,
        "statuses": [s.value for s in Status],
        "refresh": LIST_REFRESH_SECONDS,
        "message": request.query_params.get("msg"),
    }
    return render(request, "list.html", context)


async def workflow_page(request: Request) -> Response:
    """``GET /workflows/{id}``; ``failed=1`` keeps only troubled timeline rows,
    ``journal_from=N`` pages the raw journal table."""
    durable = durable_of(request)
    view = await run_in_threadpool(workflow_view, durable, request.path_params["workflow_id"])
    failed_only = request.query_params.get("failed") in ("1", "true", "yes", "on")
    try:
        journal_from = max(int(request.query_params.get("journal_from", "0")), 0)
    except ValueError:
        raise ConsoleError(400, "journal_from must be a whole number") from None
    instance = view.instance
    now = durable.now()
    end = instance.updated_at if instance.status.is_terminal else now
    timeline = build_timeline(
        view.events, instance.created_at, end, now, failed_only, view.compensation_of
    )
    journal = view.events[journal_from : journal_from + JOURNAL_PAGE]
    context = {
        "view": view,
        "info": view.header(),
        "timeline": timeline,
        "failed_only": failed_only,
        "journal": [view.event_dict(e) for e in journal],
        "journal_from": journal_from,
        "journal_page": JOURNAL_PAGE,
        "signals": view.signal_dicts(),
        "refresh": 0 if instance.status.is_terminal else WORKFLOW_REFRESH_SECONDS,
        "message": request.query_params.get("msg"),
        "live": not instance.status.is_terminal,
    }
    return render(request, "workflow.html", context)


async def journal_json(request: Request) -> Response:
    """``GET /workflows/{id}/journal.json``: the instance and its journal, as a file."""
    view = await run_in_threadpool(
        workflow_view, durable_of(request), request.path_params["workflow_id"]
    )
    response = json_response(view.to_dict())
    name = "".join(c if c.isalnum() or c in "-_." else "_" for c in view.instance.id)
    response.headers["content-disposition"] = f'attachment; filename="{name}.journal.json"'
    return response


async def read_form(request: Request) -> FormData:
    """A POSTed form (``application/x-www-form-urlencoded``), its CSRF token checked.

    Raises:
        ConsoleError: another content type (415), too large (413), a bad token (403).
    """
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/x-www-form-urlencoded":
        raise ConsoleError(415, "the pages take form posts; tools use the JSON API under /api")
    body = await request.body()
    if len(body) > MAX_BODY:
        raise ConsoleError(413, f"the form is larger than {MAX_BODY} bytes")
    pairs: list[tuple[str, str | UploadFile]] = list(
        parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True)
    )
    form = FormData(pairs)
    check_csrf(
        request.cookies.get(CSRF_COOKIE),
        form.get(CSRF_FIELD) if isinstance(form.get(CSRF_FIELD), str) else None,  # type: ignore[arg-type]
        request.headers.get("origin"),
        request.headers.get("host"),
    )
    return form


def _text(form: FormData, key: str) -> str | None:
    value = form.get(key)
    return value if isinstance(value, str) else None


async def action_form(request: Request) -> Response:
    """``POST /workflows/{id}/{action}``: do it once confirmed, then back to its page."""
    workflow_id, action = request.path_params["workflow_id"], request.path_params["action"]
    if action not in ACTIONS:
        raise ConsoleError(404, f"no action {action!r}; the actions are {', '.join(ACTIONS)}")
    form = await read_form(request)
    name = payload = None
    if action == "signal":
        name, payload = signal_from_text(_text(form, "name"), _text(form, "payload"))
    if _text(form, "confirm") != "yes":
        return _confirm(request, f"{action} workflow {workflow_id}", [workflow_id], action, form)
    outcome = await run_in_threadpool(
        perform, durable_of(request), workflow_id, action, actor_of(request), name, payload
    )
    return RedirectResponse(
        workflow_url(request, workflow_id, msg=f"{action}: {outcome.message}"), status_code=303
    )


async def bulk_form(request: Request) -> Response:
    """``POST /bulk``: cancel, terminate or retry the rows selected on the list."""
    form = await read_form(request)
    action = _text(form, "action") or ""
    if action not in ("cancel", "terminate", "retry"):
        raise ConsoleError(400, "bulk actions are cancel, terminate and retry")
    ids = [i for i in form.getlist("ids") if isinstance(i, str) and i]
    if not ids:
        raise ConsoleError(400, "select at least one workflow; nothing was changed")
    if len(ids) > BULK_LIMIT:
        raise ConsoleError(400, f"at most {BULK_LIMIT} workflows at once")
    if _text(form, "confirm") != "yes":
        return _confirm(request, f"{action} {len(ids)} workflow(s)", ids, action, form)
    durable, actor = durable_of(request), actor_of(request)
    done, refused = 0, []
    for workflow_id in ids:
        try:
            await run_in_threadpool(perform, durable, workflow_id, action, actor)
            done += 1
        except ConsoleError as exc:
            refused.append(f"{workflow_id}: {exc.message}")
    message = f"{action}: {done} of {len(ids)} done"
    if refused:
        message += "; refused: " + " | ".join(refused[:5]) + (" ..." if len(refused) > 5 else "")
    back = _text(form, "back") or ""
    target = f"{request.scope.get('root_path', '')}/?" + (back + "&" if back else "")
    return RedirectResponse(target + urlencode({"msg": message}), status_code=303)


def _confirm(request: Request, what: str, ids: list[str], action: str, form: FormData) -> Response:
    fields = [(k, v) for k, v in form.multi_items() if k not in (CSRF_FIELD, "confirm")]
    fields = [(k, v) for k, v in fields if isinstance(v, str)]
    target = (
        f"{request.scope.get('root_path', '')}/bulk"
        if request.url.path.endswith("/bulk")
        else workflow_url(request, ids[0]) + f"/{action}"
    )
    context = {"what": what, "fields": fields, "target": target, "ids": ids, "action": action}
    return render(request, "confirm.html", context)


def page_routes() -> list[Route]:
    """The pages' routes."""
    return [
        Route("/", list_page, methods=["GET"]),
        Route("/bulk", bulk_form, methods=["POST"]),
        Route("/workflows/{workflow_id:path}/journal.json", journal_json, methods=["GET"]),
        Route("/workflows/{workflow_id:path}/{action}", action_form, methods=["POST"]),
        Route("/workflows/{workflow_id:path}", workflow_page, methods=["GET"]),
    ]
