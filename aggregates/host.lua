-- A multi-tenant host: a tenant (keyed by host id) and its users. Every
-- event of a host shares its key, so one host's history is one ordered
-- stream and one failing host never blocks another.
--
-- Commands: CreateHost {name}
--           AddUser {userId, email, role}    role: "admin" | "member"
--           RemoveUser {userId}
return {
  type = "host",

  initial = function() return { users = {}, created = false } end,

  apply = {
    HostCreated = function(s, e) s.created, s.name = true, e.data.name end,
    UserAddedToHost = function(s, e)
      s.users[e.data.userId] = { email = e.data.email, role = e.data.role }
    end,
    UserRemovedFromHost = function(s, e) s.users[e.data.userId] = nil end,
  },

  handle = {
    CreateHost = function(s, cmd, ctx)
      if s.created then return ctx.reject("host already exists") end
      if type(cmd.data.name) ~= "string" or cmd.data.name == "" then
        return ctx.reject("name must not be empty")
      end
      return { { type = "HostCreated", data = { name = cmd.data.name } } }
    end,

    AddUser = function(s, cmd, ctx)
      local d = cmd.data
      if not s.created then return ctx.reject("unknown host") end
      if type(d.userId) ~= "string" or d.userId == "" then
        return ctx.reject("userId must not be empty")
      end
      if s.users[d.userId] then return ctx.reject("user already on this host") end
      if d.role ~= "admin" and d.role ~= "member" then
        return ctx.reject("role must be admin or member")
      end
      return { { type = "UserAddedToHost",
                 data = { userId = d.userId, email = d.email, role = d.role } } }
    end,

    RemoveUser = function(s, cmd, ctx)
      local user = s.users[cmd.data.userId]
      if not user then return ctx.reject("user is not on this host") end
      if user.role == "admin" then
        local admins = 0
        for _, u in pairs(s.users) do
          if u.role == "admin" then admins = admins + 1 end
        end
        if admins == 1 then return ctx.reject("cannot remove the last admin") end
      end
      return { { type = "UserRemovedFromHost", data = { userId = cmd.data.userId } } }
    end,
  },
}
