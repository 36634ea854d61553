// What this server's API offers, read from its OpenAPI document (which needs no key), so one
// page works with servers before and after an API feature arrives:
//   multiSketch - POST /search takes several `sketch` parts (one suspect, several sketches)
//   marks       - POST /searches/{id}/marks records "confirmed" / "rejected" on a result
//   refine      - POST /search takes `refine`: an earlier search whose feedback it carries
//   feedbackIds - POST /search takes `confirmed_id` / `rejected_id` gallery ids
//   history     - GET /searches lists past searches
//   cases       - /cases, a case on a search, notes on a search and its results
//   report      - GET /searches/{id}/report: the result sheet (PDF)
//   cameras     - GET /cameras lists the cameras the gallery holds
//   watchlists  - /watchlists and /alerts

const NONE = {
  multiSketch: false, marks: false, refine: false, feedbackIds: false, history: false,
  cases: false, report: false, cameras: false, watchlists: false,
};

function resolve(spec, schema) {
  let node = schema;
  while (node && node.$ref) {
    const path = node.$ref.replace(/^#\//, "").split("/");
    node = path.reduce((acc, part) => (acc ? acc[part] : undefined), spec);
  }
  return node || {};
}

const isArray = (schema) =>
  schema.type === "array" || (schema.anyOf || []).some((s) => s.type === "array");

export function capabilitiesOf(spec) {
  const paths = spec.paths || {};
  const search = paths["/api/v1/search"]?.post;
  const form = search?.requestBody?.content?.["multipart/form-data"]?.schema;
  const props = form ? resolve(spec, form).properties || {} : {};
  return {
    multiSketch: Boolean(props.sketch && isArray(props.sketch)),
    marks: Boolean(paths["/api/v1/searches/{search_id}/marks"]?.post),
    refine: "refine" in props,
    feedbackIds: "confirmed_id" in props && "rejected_id" in props,
    history: Boolean(paths["/api/v1/searches"]?.get),
    cases: Boolean(paths["/api/v1/cases"]?.get && paths["/api/v1/searches/{search_id}/notes"]?.post),
    report: Boolean(paths["/api/v1/searches/{search_id}/report"]?.get),
    cameras: Boolean(paths["/api/v1/cameras"]?.get),
    watchlists: Boolean(paths["/api/v1/watchlists"]?.post && paths["/api/v1/alerts"]?.get),
  };
}

export async function loadCapabilities() {
  try {
    const response = await fetch("/openapi.json", { cache: "no-store", credentials: "omit" });
    if (!response.ok) return { ...NONE };
    return capabilitiesOf(await response.json());
  } catch {
    return { ...NONE };
  }
}
