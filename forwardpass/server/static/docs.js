// /docs: the server's /openapi.json as a page: each tag, its routes, what they take and answer.
"use strict";

document.addEventListener("DOMContentLoaded", async () => {
  const token = sessionStorage.getItem("forwardpass-token");
  const headers = token ? { Authorization: `Bearer ${token}` } : {};
  const problem = document.getElementById("problem");
  let spec;
  try {
    const response = await fetch("/openapi.json", { headers });
    if (!response.ok) throw new Error(`${response.status}: open / first and give the token`);
    spec = await response.json();
  } catch (error) {
    problem.textContent = `Cannot read /openapi.json (${error.message})`;
    return;
  }
  document.getElementById("about").textContent = `${spec.info.description} Version ${spec.info.version}.`;
  const byTag = new Map();
  for (const [path, operations] of Object.entries(spec.paths)) {
    for (const [method, operation] of Object.entries(operations)) {
      const tag = (operation.tags || ["other"])[0];
      if (!byTag.has(tag)) byTag.set(tag, []);
      byTag.get(tag).push({ path, method, operation });
    }
  }
  const main = document.getElementById("paths");
  for (const [tag, routes] of byTag) {
    const section = document.createElement("section");
    const title = document.createElement("h2");
    title.textContent = tag;
    const table = document.createElement("table");
    for (const { path, method, operation } of routes) {
      const row = table.insertRow();
      row.insertCell().textContent = method.toUpperCase();
      const where = row.insertCell();
      const code = document.createElement("code");
      code.textContent = path;
      where.append(code);
      row.insertCell().textContent = operation.summary;
      const body = operation.requestBody ? Object.keys(operation.requestBody.content).join(", ") : "";
      row.insertCell().textContent = body;
      row.insertCell().textContent = operation.security ? "token" : "";
    }
    section.append(title, table);
    main.append(section);
  }
});
