// Who is logged in, and with which roles: the app's context for every page.
import { createContext, useContext } from "./html.js";

export const SessionContext = createContext(null);
export const useSession = () => useContext(SessionContext);

const REGION_ROLES = ["region-admin", "operator", "auditor"];

/** What the roles let the UI show. The API decides: this only hides what would be
 * refused anyway (a page reached by its address shows the API's refusal in words). */
export function abilities(account) {
  const roles = (account && account.roles) || [];
  const regionRoles = roles.filter((r) => !r.project).map((r) => r.role);
  const has = (...names) => names.some((n) => regionRoles.includes(n));
  const projectRoles = roles.filter((r) => r.project);
  return {
    regionRead: has(...REGION_ROLES),
    regionWrite: has("region-admin", "operator"),
    audit: has("region-admin", "auditor"),
    identity: has("region-admin"),
    projectAdmin: has("region-admin") || projectRoles.some((r) => r.role === "project-admin"),
    projects: [...new Set(projectRoles.map((r) => r.project))],
    canWrite: has("region-admin", "operator") ||
      projectRoles.some((r) => ["project-admin", "project-member"].includes(r.role)),
  };
}
