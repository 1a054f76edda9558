// A TypeScript client of steward's API, typed from the served /openapi.json: the test command
// generates `steward-api.d.ts` with openapi-typescript and type-checks this file with
// `tsc --strict` (scripts/check-ts-client.sh), so a change of the API that breaks a typed
// client fails the tests. Generate the types for your own client the same way:
//   npx openapi-typescript http://127.0.0.1:8080/openapi.json -o steward-api.d.ts
import type { components, operations, paths } from "./steward-api";

type StartRun = paths["/api/runs"]["post"]["requestBody"]["content"]["application/json"];
type ErrorBody = components["schemas"]["ErrorBody"];
type JobsQuery = NonNullable<operations["jobs_list"]["parameters"]["query"]>;
type ModuleChange = components["schemas"]["ChangeModule"];
type RunStarted = paths["/api/runs"]["post"]["responses"]["201"]["content"]["application/json"];
type JobPage = operations["jobs_list"]["responses"]["200"]["content"]["application/json"];
type ControlReport = components["schemas"]["ControlReport"];

/** Start a workflow run; a repeated idempotency key returns the first run. */
export async function startRun(base: string, token: string, body: StartRun): Promise<RunStarted> {
  const response = await fetch(`${base}/api/runs`, {
    method: "POST",
    headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
    body: JSON.stringify(body),
  });
  if (!response.ok) {
    const error: ErrorBody = await response.json();
    throw new Error(`${error.code}: ${error.message}`);
  }
  return response.json();
}

/** The dead-letter queue of one queue, a page at a time; the ids of its jobs. */
export async function deadJobs(base: string, token: string, query: JobsQuery): Promise<number[]> {
  const params = new URLSearchParams();
  for (const [key, value] of Object.entries(query)) {
    if (value !== undefined && value !== null) params.set(key, String(value));
  }
  const response = await fetch(`${base}/api/jobs?${params}`, {
    headers: { authorization: `Bearer ${token}` },
  });
  const page: JobPage = await response.json();
  return page.jobs.map((job) => job.id);
}

/** Pause a queue on every node; true once every live worker has applied it. */
export async function pauseQueue(base: string, token: string, queue: string): Promise<boolean> {
  const response = await fetch(`${base}/api/queues/${encodeURIComponent(queue)}/pause`, {
    method: "POST",
    headers: { authorization: `Bearer ${token}` },
  });
  const report: ControlReport = await response.json();
  return report.pending.length === 0;
}

export const examples: { start: StartRun; dead: JobsQuery; change: ModuleChange } = {
  start: { workflow: "cost_aggregation", params: { month: "2026-11" }, idempotency_key: "2026-11" },
  dead: { state: "dead", queue: "webhooks", limit: 50 },
  change: { settings: { low_stock_threshold: 5 } },
};
