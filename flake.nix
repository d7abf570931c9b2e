{
  description = "moat: run AI coding agents in a container that never sees a credential";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-25.11";

  outputs =
    { self, nixpkgs }:
    let
      systems = [
        "x86_64-linux"
        "aarch64-linux"
        "x86_64-darwin"
        "aarch64-darwin"
      ];
      forAllSystems = f: nixpkgs.lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});

      tools = [
        "moat"
        "moat-launch"
        "moat-grant"
        "moat-proxy"
        "moat-audit"
        "moat-sshd-filter"
      ];
      version = (builtins.fromTOML (builtins.readFile ./Cargo.toml)).workspace.package.version;

      # The whole workspace in one build: the six binaries share almost every dependency.
      mkMoat =
        pkgs:
        pkgs.rustPlatform.buildRustPackage {
          pname = "moat";
          inherit version;
          src = self;
          cargoLock.lockFile = ./Cargo.lock;
          nativeBuildInputs = [ pkgs.installShellFiles ];
          # The test suite drives Docker, OpenSSH and a Secret Service; `checks` runs the
          # parts that need none of them.
          doCheck = false;
          postInstall = ''
            installManPage man/*.1 man/*.5
          '';
          meta = {
            description = "Run AI coding agents in a container that never sees a credential";
            license = pkgs.lib.licenses.mit;
            mainProgram = "moat";
            platforms = pkgs.lib.platforms.linux ++ pkgs.lib.platforms.darwin;
          };
        };

      # One package per tool, so `nix run .#moat-proxy -- --help` works.
      mkTool =
        pkgs: moat: name:
        pkgs.runCommand name { meta.mainProgram = name; } ''
          mkdir -p $out/bin $out/share/man/man1
          ln -s ${moat}/bin/${name} $out/bin/${name}
          ln -s ${moat}/share/man/man1/${name}.1.gz $out/share/man/man1/${name}.1.gz
        '';
    in
    {
      packages = forAllSystems (
        pkgs:
        let
          moat = mkMoat pkgs;
        in
        nixpkgs.lib.genAttrs tools (mkTool pkgs moat) // { default = moat; }
      );

      apps = forAllSystems (
        pkgs:
        let
          pkgsFor = self.packages.${pkgs.stdenv.hostPlatform.system};
          app = name: {
            type = "app";
            program = "${pkgsFor.default}/bin/${name}";
          };
        in
        nixpkgs.lib.genAttrs tools app // { default = app "moat"; }
      );

      devShells = forAllSystems (pkgs: {
        default = pkgs.mkShell {
          inputsFrom = [ (mkMoat pkgs) ];
          packages = [
            pkgs.cargo-nextest
            pkgs.clippy
            pkgs.rustfmt
            pkgs.mandoc
            pkgs.curl
            pkgs.git
            pkgs.openssh
            pkgs.gh
          ];
        };
      });

      checks = forAllSystems (
        pkgs:
        let
          moat = mkMoat pkgs;
        in
        {
          build = moat;
          # Unit tests only: the integration suites need a Docker engine and real services.
          tests = moat.overrideAttrs (old: {
            pname = "moat-tests";
            doCheck = true;
            checkPhase = ''
              runHook preCheck
              cargo test --offline --workspace --lib --bins
              runHook postCheck
            '';
          });
          clippy = moat.overrideAttrs (old: {
            pname = "moat-clippy";
            nativeBuildInputs = old.nativeBuildInputs ++ [ pkgs.clippy ];
            buildPhase = ''
              cargo clippy --offline --workspace --all-targets -- -D warnings
            '';
            installPhase = "touch $out";
            doCheck = false;
          });
          fmt = pkgs.runCommand "moat-fmt" { nativeBuildInputs = [ pkgs.cargo pkgs.rustfmt ]; } ''
            cd ${self}
            cargo fmt --all --check
            touch $out
          '';
        }
      );

      formatter = forAllSystems (pkgs: pkgs.nixfmt-rfc-style);
    };
}
