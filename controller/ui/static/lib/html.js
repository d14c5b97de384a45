// Preact with htm's tagged templates, from the vendored standalone build: no build step.
export {
  html, render, Component, createContext, useState, useReducer, useEffect, useLayoutEffect,
  useRef, useMemo, useCallback, useContext,
} from "../vendor/htm-preact.js";
