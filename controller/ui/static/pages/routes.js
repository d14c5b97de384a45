// Every page of the UI: its address, its title, where it sits in the navigation, and the
// module that draws it (loaded when first visited).
export const routes = [
  { path: "/", title: "Dashboard", nav: "Dashboard", icon: "layout-dashboard", load: () => import("./dashboard.js") },
  { path: "/vms", title: "Virtual machines", nav: "VMs", icon: "monitor", load: () => import("./vms.js") },
  { path: "/vms/new", title: "Create a VM", load: () => import("./vm_create.js") },
  { path: "/vms/:ref", title: "VM", load: () => import("./vm.js") },
  { path: "/vms/:ref/console", title: "Console", load: () => import("./console.js") },
  { path: "/nodes", title: "Nodes", nav: "Nodes", icon: "server", needs: "regionRead", load: () => import("./nodes.js") },
  { path: "/nodes/:ref", title: "Node", needs: "regionRead", load: () => import("./node.js") },
  { path: "/images", title: "Images", nav: "Images", icon: "image", load: () => import("./images.js") },
  { path: "/volumes", title: "Volumes", nav: "Volumes", icon: "hard-drive", load: () => import("./volumes.js") },
  { path: "/networks", title: "Networks", nav: "Networks", icon: "network", load: () => import("./networks.js") },
  { path: "/networks/:ref", title: "Network", load: () => import("./network.js") },
  { path: "/security-groups", title: "Security groups", nav: "Security groups", icon: "shield", load: () => import("./security_groups.js") },
  { path: "/security-groups/:ref", title: "Security group", load: () => import("./security_group.js") },
  { path: "/operations", title: "Operations", nav: "Operations", icon: "activity", load: () => import("./operations.js") },
  { path: "/audit", title: "Audit trail", nav: "Audit", icon: "scroll-text", needs: "audit", load: () => import("./audit.js") },
  { path: "/projects", title: "Projects", nav: "Projects", icon: "folder-kanban", load: () => import("./projects.js") },
  { path: "/projects/:ref", title: "Project", load: () => import("./project.js") },
  { path: "/users", title: "Users", nav: "Users", icon: "users", needs: "identity", load: () => import("./users.js") },
  { path: "/account", title: "My account", nav: "Account & tokens", icon: "key-round", load: () => import("./account.js") },
];
